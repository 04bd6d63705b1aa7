"""Sparse autoencoders on activations: a TopK SAE with an auxiliary loss against dead features.

:class:`SparseAutoencoder` follows scikit-learn's conventions (``fit`` / ``partial_fit`` /
``transform`` / ``inverse_transform``, fitted state ending in ``_``) and trains in torch on the
CPU or a GPU. :func:`iter_site_rows` streams token-level rows of one site of a recorded run
chunk by chunk, so a run larger than memory trains with ``partial_fit``.

Model (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), on rows standardised
as ``u = (x - mean_) / scale_`` (``scale_`` one scalar: the RMS of the centred rows per channel)::

    pre = (u - b_pre) @ W_enc + b_enc                 # [row, feature]
    z   = ReLU(TopK_k(pre))                           # at most k non-zero activations per row
    û   = z @ W_dec + b_pre                           # decoder rows W_dec[i] have unit norm
    loss = mean((u - û)^2) + aux_coef * L_aux

The auxiliary loss (AuxK) keeps features from dying: a feature that has not fired on the last
``dead_after`` training rows is *dead*; the ``aux_k`` largest pre-activations among dead features
alone must reconstruct the main model's residual ``e = u - û`` (detached)::

    ê     = ReLU(TopK_aux_k(pre restricted to dead features)) @ W_dec
    L_aux = mean((e - ê)^2) / mean(e^2)

so the gradient pulls dead features toward directions the live ones miss. After every Adam step
the decoder rows are renormalised (and their gradient's component along the row removed first).

``partial_fit`` makes one pass over its rows in minibatches of ``batch_size`` (shuffled within
the call when ``shuffle=True``); ``fit`` resets and makes ``epochs`` such passes. The first
minibatch ever seen sets ``mean_``, ``scale_`` and ``b_pre``, so with ``shuffle=False`` a
``partial_fit`` per chunk (chunks a multiple of ``batch_size`` rows) runs exactly the same
updates as one ``fit(concatenation, epochs=1)`` — equal to ~1e-6 (tests/test_analysis_sae.py).

Example::

    sae = SparseAutoencoder(n_features=256, k=8, random_state=0).fit(X)   # X [row, channel]
    z = sae.transform(X)                 # [row, 256], <= 8 non-zeros per row
    X_hat = sae.inverse_transform(z)     # [row, channel]
    sae.fvu(X), sae.dead_fraction(X)
    sae.save("runs/shapes/analysis/sae/blocks.3.resid_out.img/sae", provenance={"run": "runs/shapes"})
    d = sae.feature_direction(17, site="blocks.3.resid_out.img")   # a latentlens.Direction
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from latentlens.errors import ConfigError, StoreError

FORMAT = "latentlens.sae"
FORMAT_VERSION = 1
DirectionScale = Literal["mean_activation", "decoder", "unit"]

# fitted arrays saved in the safetensors file (all float32 except the counters)
_ARRAYS = ("W_enc_", "b_enc_", "W_dec_", "b_pre_", "mean_", "rows_since_fired_", "fire_count_", "activation_sum_")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {name!r}.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but torch sees no CUDA GPU here; use device='cpu'.")
    return device


def _topk_relu(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [row, rank], indices [row, rank])`` of the k largest pre-activations, ReLU'd."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.clamp_min(0.0), indices


class SparseAutoencoder(TransformerMixin, BaseEstimator):
    """A TopK sparse autoencoder with an AuxK loss against dead features, trained in torch.

    Parameters:
        n_features: dictionary size (number of SAE features).
        k: active features per row (TopK); must be at most ``n_features``.
        aux_k: dead features the auxiliary loss may use per row (``None``: half the input width,
            at most ``n_features``); 0 turns the auxiliary loss off.
        aux_coef: weight of the auxiliary loss (1/32, as in Gao et al.).
        dead_after: a feature is dead once it has not fired on this many training rows.
        epochs: passes over the data in ``fit`` (``partial_fit`` always makes one).
        batch_size: rows per Adam step.
        lr: Adam learning rate.
        shuffle: shuffle rows within each ``fit`` epoch / ``partial_fit`` call.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (a GPU when torch sees one).
        random_state: seeds the initialisation and the shuffling.

    Fitted: ``W_enc_`` ``[channel, feature]``, ``b_enc_`` ``[feature]``, ``W_dec_``
    ``[feature, channel]`` (unit rows, standardised units), ``b_pre_`` ``[channel]``, ``mean_`` ``[channel]``,
    ``scale_`` (float), ``n_features_in_``, ``n_steps_``, ``n_rows_seen_``, ``rows_since_fired_``
    ``[feature]``, ``aux_steps_`` (Adam steps on which the auxiliary loss was active), ``fire_count_`` and ``activation_sum_`` ``[feature]`` (training rows
    each feature fired on, and the sum of its activations there), ``loss_curve_``.

    Example::

        sae = SparseAutoencoder(n_features=64, k=4, epochs=5, random_state=0).fit(X)
        sae.transform(X[:3]).astype(bool).sum(1)      # array([4, 4, 4])
    """

    def __init__(
        self,
        n_features: int = 256,
        k: int = 8,
        *,
        aux_k: int | None = None,
        aux_coef: float = 1.0 / 32.0,
        dead_after: int = 20_000,
        epochs: int = 1,
        batch_size: int = 256,
        lr: float = 1e-3,
        shuffle: bool = True,
        device: str = "cpu",
        random_state: int | None = 0,
    ) -> None:
        self.n_features = n_features
        self.k = k
        self.aux_k = aux_k
        self.aux_coef = aux_coef
        self.dead_after = dead_after
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.shuffle = shuffle
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------ checks
    def check_params(self) -> None:
        """Raise :class:`ConfigError` (a ``ValueError``) for an invalid hyperparameter, e.g. ``k > n_features``."""

        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")

        positive_int("n_features", self.n_features)
        positive_int("k", self.k)
        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        positive_int("dead_after", self.dead_after)
        if self.k > self.n_features:
            raise ConfigError(
                f"k={self.k} is larger than n_features={self.n_features}; a TopK SAE activates at most "
                "n_features features per row, so choose k <= n_features."
            )
        if self.aux_k is not None and (
            isinstance(self.aux_k, bool) or not isinstance(self.aux_k, (int, np.integer)) or self.aux_k < 0
        ):
            raise ConfigError(f"aux_k must be a non-negative integer or None, got {self.aux_k!r}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}.")
        if not (isinstance(self.aux_coef, (int, float)) and self.aux_coef >= 0):
            raise ConfigError(f"aux_coef must be a non-negative number, got {self.aux_coef!r}.")

    def _aux_k(self, dim: int) -> int:
        k = max(1, dim // 2) if self.aux_k is None else int(self.aux_k)
        return min(k, int(self.n_features))

    def _rows(self, X: Any, reset: bool) -> np.ndarray:
        """Validated ``[row, channel]`` float32 (float64 input is kept for the output dtype only)."""
        if isinstance(X, torch.Tensor):
            X = X.detach().to("cpu", torch.float32).numpy()
        return validate_data(self, X, dtype=[np.float32, np.float64], reset=reset)

    # ------------------------------------------------------------- state
    def _initialise(self, first: np.ndarray) -> None:
        """Parameters from the first minibatch: mean, scale, b_pre; random unit decoder, W_enc = W_dec^T."""
        dim = first.shape[1]
        generator = torch.Generator().manual_seed(int(self.random_state or 0))
        x = torch.from_numpy(np.asarray(first, dtype=np.float64))
        mean = x.mean(0)  # [channel]
        rms = float(((x - mean) ** 2).mean().sqrt())
        self.mean_ = mean.numpy().astype(np.float32)
        self.scale_ = rms if rms > 1e-12 else 1.0
        W_dec = torch.randn(int(self.n_features), dim, generator=generator, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [feature, channel]
        self.W_dec_ = W_dec.numpy()
        self.W_enc_ = W_dec.T.contiguous().numpy()  # [channel, feature]
        self.b_enc_ = np.zeros(int(self.n_features), dtype=np.float32)
        self.b_pre_ = np.zeros(dim, dtype=np.float32)
        self.rows_since_fired_ = np.zeros(int(self.n_features), dtype=np.float64)
        self.fire_count_ = np.zeros(int(self.n_features), dtype=np.float64)
        self.activation_sum_ = np.zeros(int(self.n_features), dtype=np.float64)
        self.n_steps_ = 0
        self.aux_steps_ = 0
        self.n_rows_seen_ = 0
        self.loss_curve_: list[float] = []
        self.optimizer_state_: dict[str, Any] | None = None
        self.rng_state_ = generator.get_state().numpy()

    def _reset(self) -> None:
        for name in (
            *_ARRAYS,
            "scale_",
            "n_steps_",
            "aux_steps_",
            "n_rows_seen_",
            "loss_curve_",
            "optimizer_state_",
            "rng_state_",
            "n_features_in_",
        ):
            self.__dict__.pop(name, None)

    def _params(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            name: torch.tensor(getattr(self, name + "_"), dtype=torch.float32, device=device).requires_grad_(True)
            for name in ("W_enc", "b_enc", "W_dec", "b_pre")
        }

    # --------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any = None) -> SparseAutoencoder:
        """Train from scratch for ``epochs`` passes over ``X`` ``[row, channel]``; returns ``self``."""
        self.check_params()
        self._reset()
        X = self._rows(X, reset=True)
        for _ in range(int(self.epochs)):
            self._train_pass(X)
        return self

    def partial_fit(self, X: Any, y: Any = None) -> SparseAutoencoder:
        """One pass over the rows ``X`` ``[row, channel]`` (a chunk of a stream), continuing the training."""
        self.check_params()
        first = not hasattr(self, "W_dec_")
        X = self._rows(X, reset=first)
        self._train_pass(X)
        return self

    def _train_pass(self, X: np.ndarray) -> None:
        rows, dim = X.shape
        if rows == 0:
            return
        if not hasattr(self, "W_dec_"):
            self._initialise(X[: int(self.batch_size)])
        device = _device(self.device)
        generator = torch.Generator()
        generator.set_state(torch.from_numpy(np.asarray(self.rng_state_, dtype=np.uint8)))
        order = torch.randperm(rows, generator=generator) if self.shuffle else torch.arange(rows)
        self.rng_state_ = generator.get_state().numpy()
        params = self._params(device)
        optimizer = torch.optim.Adam(list(params.values()), lr=float(self.lr))
        if self.optimizer_state_ is not None:
            optimizer.load_state_dict(_optimizer_state_to(self.optimizer_state_, device))
        mean = torch.from_numpy(self.mean_).to(device)
        scale = float(self.scale_)
        rows_since = torch.from_numpy(self.rows_since_fired_).to(device)
        fire_count = torch.from_numpy(self.fire_count_).to(device)
        activation_sum = torch.from_numpy(self.activation_sum_).to(device)
        k, aux_k = int(self.k), self._aux_k(dim)
        step = int(self.batch_size)
        data = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        W_enc, b_enc, W_dec, b_pre = params["W_enc"], params["b_enc"], params["W_dec"], params["b_pre"]
        losses: list[float] = []
        aux_steps = 0
        for start in range(0, rows, step):
            u = (data[order[start : start + step]].to(device) - mean) / scale  # [row, channel]
            pre = (u - b_pre) @ W_enc + b_enc  # [row, feature]
            values, indices = _topk_relu(pre, k)
            z = torch.zeros_like(pre).scatter(-1, indices, values)  # [row, feature]
            u_hat = z @ W_dec + b_pre
            loss = (u - u_hat).pow(2).mean()
            fired = (z > 0).any(0)  # [feature]
            dead = rows_since >= float(self.dead_after)
            if aux_k > 0 and self.aux_coef > 0 and bool(dead.any()):
                residual = (u - u_hat).detach()  # [row, channel]
                masked = pre.masked_fill(~dead, float("-inf"))
                n_dead = int(dead.sum())
                aux_values, aux_indices = _topk_relu(masked, min(aux_k, n_dead))
                z_aux = torch.zeros_like(pre).scatter(-1, aux_indices, aux_values)
                aux = (residual - z_aux @ W_dec).pow(2).mean() / residual.pow(2).mean().clamp_min(1e-12)
                loss = loss + float(self.aux_coef) * aux
                aux_steps += 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():  # keep decoder rows on the unit sphere: drop the radial gradient
                W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
            optimizer.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
                rows_since += float(u.shape[0])
                rows_since[fired] = 0.0
                fire_count += (z > 0).sum(0).to(fire_count.dtype)
                activation_sum += z.sum(0).to(activation_sum.dtype)
            losses.append(float(loss.detach()))
        for name, tensor in params.items():
            setattr(self, name + "_", tensor.detach().cpu().numpy().copy())
        self.rows_since_fired_ = rows_since.cpu().numpy()
        self.fire_count_ = fire_count.cpu().numpy()
        self.activation_sum_ = activation_sum.cpu().numpy()
        self.optimizer_state_ = _optimizer_state_to(optimizer.state_dict(), torch.device("cpu"), numpy=True)
        self.n_steps_ += len(losses)
        self.aux_steps_ += aux_steps
        self.n_rows_seen_ += rows
        self.loss_curve_.extend(losses)

    # --------------------------------------------------------- transform
    def _encode(self, X: np.ndarray, device: torch.device) -> torch.Tensor:
        u = (
            torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
            - torch.from_numpy(self.mean_).to(device)
        ) / float(self.scale_)
        W_enc = torch.from_numpy(self.W_enc_).to(device)
        pre = (u - torch.from_numpy(self.b_pre_).to(device)) @ W_enc + torch.from_numpy(self.b_enc_).to(device)
        values, indices = _topk_relu(pre, int(self.k))
        return torch.zeros_like(pre).scatter(-1, indices, values)  # [row, feature]

    def transform(self, X: Any) -> np.ndarray:
        """Feature activations ``[row, feature]`` (at most ``k`` non-zero per row), in standardised units."""
        check_is_fitted(self, "W_dec_")
        X = self._rows(X, reset=False)
        with torch.no_grad():
            z = self._encode(X, _device(self.device))
        return z.cpu().numpy().astype(X.dtype, copy=False)

    def inverse_transform(self, Z: Any) -> np.ndarray:
        """Reconstruct rows ``[row, channel]`` (original units) from activations ``[row, feature]``."""
        check_is_fitted(self, "W_dec_")
        Z = np.asarray(Z)
        if Z.ndim != 2 or Z.shape[1] != int(self.n_features):
            raise ValueError(f"Z must be [rows, {self.n_features}] feature activations, got shape {Z.shape}.")
        u = Z.astype(np.float32) @ self.W_dec_ + self.b_pre_  # [row, channel]
        out = u * float(self.scale_) + self.mean_
        return out.astype(Z.dtype if Z.dtype in (np.float32, np.float64) else np.float32, copy=False)

    def reconstruct(self, X: Any) -> np.ndarray:
        """``inverse_transform(transform(X))``, in one go."""
        return self.inverse_transform(self.transform(X))

    def reconstruction_error(self, X: Any) -> np.ndarray:
        """Per-row relative error ``|x - x̂|² / |x - mean_|²`` ``[row]`` (how out of distribution a row is for the SAE)."""
        X = self._rows(X, reset=False).astype(np.float64)
        err = ((X - self.reconstruct(X)) ** 2).sum(1)
        return err / np.maximum(((X - self.mean_) ** 2).sum(1), 1e-12)

    def fvu(self, X: Any) -> float:
        """Fraction of variance unexplained on ``X``: ``Σ|x - x̂|² / Σ|x - mean(X)|²``."""
        X = self._rows(X, reset=False).astype(np.float64)
        return float(((X - self.reconstruct(X)) ** 2).sum() / max(((X - X.mean(0)) ** 2).sum(), 1e-300))

    def dead_fraction(self, X: Any | None = None) -> float:
        """Fraction of features that never fire on ``X`` (``None``: that are dead in training by ``dead_after``)."""
        check_is_fitted(self, "W_dec_")
        if X is None:
            return float(np.mean(self.rows_since_fired_ >= float(self.dead_after)))
        return float(np.mean(~(self.transform(X) > 0).any(0)))

    # -------------------------------------------------------- directions
    @property
    def mean_activation_(self) -> np.ndarray:
        """Mean activation of each feature over the training rows it fired on ``[feature]`` (0 if never)."""
        check_is_fitted(self, "W_dec_")
        return np.where(self.fire_count_ > 0, self.activation_sum_ / np.maximum(self.fire_count_, 1), 0.0)

    @property
    def frequency_(self) -> np.ndarray:
        """Fraction of training rows each feature fired on ``[feature]``."""
        check_is_fitted(self, "W_dec_")
        return self.fire_count_ / max(float(self.n_rows_seen_), 1.0)

    def feature_vector(self, feature: int, scale: DirectionScale = "mean_activation") -> np.ndarray:
        """Feature ``feature``'s decoder row in the original units ``[channel]``.

        ``scale``: ``"mean_activation"`` (what the feature adds when it fires with its mean training
        activation), ``"decoder"`` (activation 1) or ``"unit"`` (norm 1).
        """
        check_is_fitted(self, "W_dec_")
        self._check_feature(feature)
        vector = self.W_dec_[int(feature)].astype(np.float64) * float(self.scale_)
        if scale == "mean_activation":
            return vector * float(self.mean_activation_[int(feature)])
        if scale == "decoder":
            return vector
        if scale == "unit":
            return vector / max(float(np.linalg.norm(vector)), 1e-300)
        raise ConfigError(f"scale must be 'mean_activation', 'decoder' or 'unit', got {scale!r}.")

    def feature_direction(
        self,
        feature: int,
        *,
        site: str,
        steps: Sequence[int] | None = None,
        tokens: Sequence[int] | None = None,
        scale: DirectionScale = "mean_activation",
        **provenance: Any,
    ) -> Any:
        """Feature ``feature`` as a :class:`latentlens.Direction` (its decoder row), for ``steer`` and the editor.

        Example: ``sae.feature_direction(17, site="blocks.3.resid_out.img", run="runs/shapes").save("f17")``.
        """
        from latentlens.direction import Direction

        vector = self.feature_vector(feature, scale)
        if not np.any(vector):
            raise ConfigError(
                f"Feature {feature} never fired in training, so its mean-activation direction is zero; "
                "use scale='decoder' or choose a live feature."
            )
        record: dict[str, Any] = {
            "method": "sae_feature",
            "feature": int(feature),
            "scale": scale,
            "n_features": int(self.n_features),
            "k": int(self.k),
            "frequency": float(self.frequency_[int(feature)]),
            "mean_activation": float(self.mean_activation_[int(feature)]),
            "sae_config_hash": self.config_hash(),
        }
        record.update(getattr(self, "provenance_", {}) or {})
        record.update(provenance)
        return Direction(torch.from_numpy(vector), site=site, steps=steps, tokens=tokens, provenance=record)

    def _check_feature(self, feature: Any) -> None:
        if (
            isinstance(feature, bool)
            or not isinstance(feature, (int, np.integer))
            or not 0 <= feature < self.n_features
        ):
            raise ConfigError(
                f"Feature {feature!r} does not exist; the SAE has features 0..{int(self.n_features) - 1}."
            )

    # --------------------------------------------------------------- I/O
    def config(self) -> dict[str, Any]:
        """The hyperparameters (``get_params``) as plain JSON values."""
        return {
            key: (value.item() if isinstance(value, np.generic) else value) for key, value in self.get_params().items()
        }

    def config_hash(self) -> str:
        """A short hash of the hyperparameters and the input width (which SAE this is, not its weights)."""
        payload = {**self.config(), "n_features_in": int(getattr(self, "n_features_in_", 0))}
        payload.pop("device", None)
        text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def save(
        self, path: str | Path, *, provenance: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None
    ) -> tuple[Path, Path]:
        """Write ``path.safetensors`` (weights and counters) and ``path.json`` (config, provenance, metrics).

        ``provenance`` should name where the rows came from, e.g. ``{"run": ..., "site": ..., "steps": [...]}``;
        it is stored with the config hash and carried into every exported feature direction.
        """
        from safetensors.torch import save_file

        check_is_fitted(self, "W_dec_")
        base = Path(path)
        if base.suffix in (".safetensors", ".json"):
            base = base.with_suffix("")
        tensor_path, json_path = base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")
        base.parent.mkdir(parents=True, exist_ok=True)
        if provenance is not None:
            self.provenance_ = dict(provenance)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self.config(),
            "config_hash": self.config_hash(),
            "n_features_in": int(self.n_features_in_),
            "scale": float(self.scale_),
            "n_steps": int(self.n_steps_),
            "aux_steps": int(self.aux_steps_),
            "n_rows_seen": int(self.n_rows_seen_),
            "provenance": getattr(self, "provenance_", {}),
            "metrics": metrics or {},
            "loss_curve_tail": [float(v) for v in self.loss_curve_[-50:]],
        }
        try:
            text = json.dumps(meta, indent=2, allow_nan=True)
        except TypeError as error:
            raise ConfigError(f"SAE provenance and metrics must be JSON-serialisable: {error}.") from None
        tensors = {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in _ARRAYS}
        save_file(tensors, str(tensor_path), metadata={"format": FORMAT})
        json_path.write_text(text + "\n")
        return tensor_path, json_path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> SparseAutoencoder:
        """Read an SAE written by :meth:`save` (``path`` with or without suffix); ready to ``transform``.

        The Adam moments are not saved: ``partial_fit`` after ``load`` restarts the optimiser.
        """
        from safetensors.torch import load_file

        base = Path(path)
        if base.suffix in (".safetensors", ".json"):
            base = base.with_suffix("")
        tensor_path, json_path = base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")
        for p in (tensor_path, json_path):
            if not p.is_file():
                raise StoreError(
                    f"Cannot load the SAE {str(path)!r}: {p} does not exist; a saved SAE is a pair NAME.safetensors "
                    "+ NAME.json written by SparseAutoencoder.save(NAME) or `latentlens sae`."
                )
        try:
            meta = json.loads(json_path.read_text())
            tensors = load_file(str(tensor_path))
        except Exception as error:  # json, OS and safetensors' own errors
            raise StoreError(f"Cannot read the SAE {str(path)!r}: {error}.") from None
        if meta.get("format") != FORMAT or any(name not in tensors for name in _ARRAYS):
            raise StoreError(f"{json_path} is not a latentlens SAE (missing format tag or weights).")
        config = dict(meta["config"])
        if device is not None:
            config["device"] = device
        sae = cls(**config)
        for name in _ARRAYS:
            array = tensors[name].numpy()
            setattr(
                sae,
                name,
                array.astype(np.float64)
                if name in ("rows_since_fired_", "fire_count_", "activation_sum_")
                else array.astype(np.float32),
            )
        sae.scale_ = float(meta["scale"])
        sae.n_features_in_ = int(meta["n_features_in"])
        sae.n_steps_ = int(meta.get("n_steps", 0))
        sae.aux_steps_ = int(meta.get("aux_steps", 0))
        sae.n_rows_seen_ = int(meta.get("n_rows_seen", 0))
        sae.loss_curve_ = list(meta.get("loss_curve_tail") or [])
        sae.optimizer_state_ = None
        sae.rng_state_ = torch.Generator().manual_seed(int(sae.random_state or 0)).get_state().numpy()
        sae.provenance_ = dict(meta.get("provenance") or {})
        sae.metrics_ = dict(meta.get("metrics") or {})
        return sae

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _optimizer_state_to(state: dict[str, Any], device: torch.device, numpy: bool = False) -> dict[str, Any]:
    """A copy of an Adam ``state_dict`` with its tensors on ``device`` (``numpy``: as numpy arrays, picklable)."""

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy().copy() if numpy else value.to(device)
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.copy()).to(device)
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return [convert(item) for item in value]
        return value

    return convert(state)


# ------------------------------------------------------------------ streaming
def site_steps(run: Any, site: str, steps: Sequence[int] | None) -> list[tuple[int, int]]:
    """``[(position on the stored step axis, denoising step)]`` of ``steps`` at ``site`` (``None``: all)."""
    recorded = run.recorded_steps(run[site].shape[1])
    if steps is None:
        return list(enumerate(recorded))
    missing = [s for s in steps if s not in recorded]
    if missing:
        raise ConfigError(f"Step {missing[0]} was not recorded at site {site!r}; recorded steps: {recorded}.")
    return [(recorded.index(int(s)), int(s)) for s in sorted(set(int(s) for s in steps))]


def iter_site_rows(
    run: Any,
    site: str,
    *,
    steps: Sequence[int] | None = None,
    samples: Sequence[int] | None = None,
    block_samples: int | None = None,
    shuffle_blocks: bool = False,
    seed: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Stream token-level rows of one site: yields ``(rows [row, channel] float32 (one row per sample and token), sample ids [sample], step)``.

    Reads ``block_samples`` samples (default: the store's samples per chunk) at one recorded step per
    block straight from the chunk files, so memory stays at one block whatever the run's size.
    Only ``samples`` (default: the finished ones) are kept. ``shuffle_blocks`` visits the
    (step, sample block) pairs in a seeded random order (for training).

    Example::

        for rows, ids, step in iter_site_rows(run, "blocks.3.resid_out.img", steps=[19]):
            sae.partial_fit(rows)
    """
    array = run[site]
    if tuple(array.dims[:2]) != ("sample", "step") or array.dims[-1] != "channel":
        raise ConfigError(
            f"{site!r} has dims {array.dims}; an SAE needs an activation site [sample, step, (token,) channel]."
        )
    wanted = np.asarray(
        sorted(run.completed) if samples is None else sorted(set(int(s) for s in samples)), dtype=np.int64
    )
    if len(wanted) == 0:
        raise StoreError(f"The run {run.path} has no finished samples at {site!r} to train on.")
    per = int(block_samples or array.chunks[0] or 1)
    lo, hi = int(wanted[0]), int(wanted[-1]) + 1
    blocks = [(pos, step, a) for pos, step in site_steps(run, site, steps) for a in range(lo - lo % per, hi, per)]
    if shuffle_blocks:
        rng = np.random.default_rng(seed)
        blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    for pos, step, a in blocks:
        b = min(a + per, hi)
        keep = wanted[(wanted >= a) & (wanted < b)]
        if len(keep) == 0:
            continue
        data = np.asarray(array[a:b, pos])[keep - a]  # [sample, token, channel] or [sample, channel]
        if data.ndim == 2:
            data = data[:, None, :]
        yield data.reshape(-1, data.shape[-1]).astype(np.float32, copy=False), keep, step


__all__ = ["SparseAutoencoder", "iter_site_rows", "site_steps"]
