"""PCA of activations: dense (:class:`PCA`) and streaming (:class:`StreamingPCA`, ``partial_fit``).

:class:`StreamingPCA` accumulates the sample count, the sum and the scatter matrix
``X^T X`` in float64 (each batch's product is computed in ``precision`` and added
to the float64 accumulator, after shifting by the first batch's mean so large
offsets cannot cancel catastrophically). Memory is ``O(d^2)`` whatever the
number of rows: 1,536 channels need 19 MB of state. ``fit``/``partial_fit``
results equal the dense PCA's: with float64 batches the explained variances agree
to ~1e-10 relative and components to ``1 - |cos| < 1e-8``; with the default
float32 batch products to ~1e-5 relative (see tests/test_analysis_pca.py).

Example::

    pca = StreamingPCA(n_components=16)
    for batch in batches:                 # each [row, channel]
        pca.partial_fit(batch)
    pca.explained_variance_ratio_[:3], pca.components_.shape   # (16, channel)
    Z = pca.transform(batch)              # [row, 16]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from latentlens.errors import ConfigError


def _as_tensor(X: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(X, torch.Tensor):
        return X.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(X), dtype=dtype)


def _sign_flip(components: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of every component positive (deterministic output)."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


class _PCABase(TransformerMixin, BaseEstimator):
    def transform(self, X: Any) -> np.ndarray:
        """Project onto the components: ``[row, channel]`` → ``[row, component]``."""
        check_is_fitted(self, "components_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return (X - self.mean_) @ self.components_.T

    def inverse_transform(self, Z: Any) -> np.ndarray:
        check_is_fitted(self, "components_")
        return np.asarray(Z) @ self.components_ + self.mean_

    def _finish(self, cov: np.ndarray, mean: np.ndarray, n: int) -> dict[str, Any]:
        """Fitted attributes from a float64 covariance (ddof=1) and mean."""
        d = cov.shape[0]
        k = self._resolve_k(d, n)
        eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
        eigvals = np.clip(eigvals[::-1], 0.0, None)
        eigvecs = eigvecs[:, ::-1].T  # [channel, channel], rows = components
        total = float(eigvals.sum())
        return {
            "mean_": mean,
            "components_": _sign_flip(eigvecs[:k]),
            "explained_variance_": eigvals[:k],
            "explained_variance_ratio_": eigvals[:k] / total if total > 0 else np.zeros(k),
            "singular_values_": np.sqrt(eigvals[:k] * max(n - 1, 1)),
            "noise_variance_": float(eigvals[k:].mean()) if k < min(d, n) else 0.0,
            "n_components_": k,
            "n_samples_seen_": n,
        }

    def _resolve_k(self, d: int, n: int) -> int:
        k = self.n_components
        limit = min(d, n) if not isinstance(self, StreamingPCA) else d
        if k is None:
            return limit
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"n_components must be a positive integer or None, got {k!r}.")
        if k > limit:
            raise ValueError(f"n_components={k} is larger than the data allows ({limit}: min of samples and dim).")
        return int(k)


class PCA(_PCABase):
    """Dense PCA by the SVD of the centred data (float64), same fitted attributes as scikit-learn's.

    Fitted: ``components_`` ``[component, channel]`` (sign: largest entry positive), ``explained_variance_``,
    ``explained_variance_ratio_``, ``singular_values_``, ``mean_``, ``n_components_``, ``n_samples_seen_``.

    Example: ``PCA(n_components=2).fit_transform(X)``.
    """

    def __init__(self, n_components: int | None = None) -> None:
        self.n_components = n_components

    def fit(self, X: Any, y: Any = None) -> PCA:
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        n, d = X.shape
        k = self._resolve_k(d, n)
        mean = X.mean(axis=0)
        _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
        variances = s**2 / (n - 1)
        total = float(variances.sum())
        self.mean_ = mean
        self.components_ = _sign_flip(vt[:k])  # [component, channel]
        self.explained_variance_ = variances[:k]
        self.explained_variance_ratio_ = variances[:k] / total if total > 0 else np.zeros(k)
        self.singular_values_ = s[:k]
        self.noise_variance_ = float(variances[k:].mean()) if k < min(n, d) else 0.0
        self.n_components_ = k
        self.n_samples_seen_ = n
        return self


class StreamingPCA(_PCABase):
    """PCA from streamed batches: ``partial_fit`` accumulates float64 moments in ``O(dim^2)`` memory.

    Parameters:
        n_components: components to keep (``None``: all ``dim``).
        precision: ``"float32"`` (default, fast) or ``"float64"`` for the per-batch ``X^T X`` product;
            the running sums are always float64.
        batch_size: rows per product inside ``fit`` / ``partial_fit`` (bounds temporary memory).

    Components are (re)computed lazily from the moments after each ``partial_fit``.
    """

    def __init__(self, n_components: int | None = None, precision: str = "float32", batch_size: int = 16384) -> None:
        self.n_components = n_components
        self.precision = precision
        self.batch_size = batch_size

    def _dtype(self) -> torch.dtype:
        if self.precision not in ("float32", "float64"):
            raise ConfigError(f"precision must be 'float32' or 'float64', got {self.precision!r}.")
        return torch.float32 if self.precision == "float32" else torch.float64

    def fit(self, X: Any, y: Any = None) -> StreamingPCA:
        for attr in ("n_seen_", "shift_", "sum_", "scatter_", "_fitted", "n_features_in_"):
            self.__dict__.pop(attr, None)
        self.partial_fit(X)
        self.components_  # noqa: B018 - compute now, so transform() leaves the estimator unchanged
        return self

    n_features_in_: int  # fitted state (set by the first partial_fit)

    def partial_fit(self, X: Any, y: Any = None) -> StreamingPCA:
        """Add a batch ``[row, channel]`` (numpy array or torch tensor) to the running moments."""
        first = not hasattr(self, "n_seen_")
        if isinstance(X, torch.Tensor):
            if X.ndim != 2:
                raise ValueError(f"Expected a 2-D batch [rows, dim], got shape {tuple(X.shape)}.")
            if not first and X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but StreamingPCA is expecting {self.n_features_in_} features as input."
                )
            if not bool(torch.isfinite(X).all()):
                raise ValueError("Input X contains NaN or infinity.")
            if first:
                self.n_features_in_ = int(X.shape[1])
        else:
            X = validate_data(self, X, dtype=[np.float64, np.float32], reset=first)
        dtype = self._dtype()
        rows, d = X.shape
        if rows == 0:
            return self
        if first:
            # Shift by the first batch's mean: moments of (x - shift) keep full precision.
            self.shift_ = _as_tensor(X[: min(rows, 4096)], torch.float64).mean(0)  # [channel]
            self.n_seen_ = 0
            self.sum_ = torch.zeros(d, dtype=torch.float64)
            self.scatter_ = torch.zeros(d, d, dtype=torch.float64)
        shift = self.shift_.to(dtype)
        step = max(1, int(self.batch_size))
        for start in range(0, rows, step):
            chunk = _as_tensor(X[start : start + step], dtype) - shift  # [row, channel]
            self.sum_ += chunk.sum(0, dtype=torch.float64)
            self.scatter_ += (chunk.T @ chunk).to(torch.float64)
        self.n_seen_ += rows
        self.__dict__.pop("_fitted", None)
        if self.n_seen_ >= 2 and self.n_components is not None:
            self._resolve_k(d, self.n_seen_)  # fail early on an impossible n_components
        return self

    _LAZY = frozenset(
        {
            "mean_",
            "components_",
            "explained_variance_",
            "explained_variance_ratio_",
            "singular_values_",
            "noise_variance_",
            "n_components_",
            "n_samples_seen_",
        }
    )

    def __getattr__(self, name: str) -> Any:
        # Components are computed from the moments on first access after a partial_fit (one eigh).
        if name in StreamingPCA._LAZY and "n_seen_" in self.__dict__:
            fitted = self.__dict__.get("_fitted")
            if fitted is None:
                fitted = self._compute()
                self.__dict__["_fitted"] = fitted
            return fitted[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _compute(self) -> dict[str, Any]:
        n = self.n_seen_
        if n < 2:
            raise ValueError(f"StreamingPCA needs at least 2 rows, got n_samples={n}.")
        mean_shifted = self.sum_ / n  # [channel]
        cov = (self.scatter_ - n * torch.outer(mean_shifted, mean_shifted)) / (n - 1)
        cov = 0.5 * (cov + cov.T)
        return self._finish(cov.numpy(), (mean_shifted + self.shift_).numpy(), n)
