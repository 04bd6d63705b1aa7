"""Linear probes: one multinomial logistic regression per (site, step), all fitted in one batched solve.

:class:`LinearProbe` is a single scikit-learn-compatible classifier (checked with
``parametrize_with_checks``). :class:`LinearProbeGrid` fits every cell of a
(site × step) grid and every attribute at once: the cells' feature matrices are
stacked into one ``[cell, sample, channel]`` tensor and the softmax heads of
all attributes (and their control tasks) share one L-BFGS solve of the summed,
separable objective, so the grid costs a handful of batched matrix products per
iteration instead of thousands of small fits.

Objective per cell and attribute (scikit-learn's, on standardised features)::

    C * sum_i CE(softmax(W x_i + b), y_i) + 0.5 * ||W||^2     (intercept b not penalised)

Held-out evaluation uses one seeded split shared by all cells (grouped by
``groups``, e.g. the prompt text, so a prompt never sits on both sides).
Accuracy comes with a Wilson 95% interval. Selectivity (Hewitt & Liang, 2019) is
accuracy minus the accuracy of the same probe on a *control task*: every
``type`` (by default the sample's full label combination) gets a random class
drawn from the attribute's empirical class distribution, so the control task can
be solved only by memorising types, not by reading the attribute.

Example::

    grid = LinearProbeGrid(C=1.0, random_state=0).fit(
        {("blocks.0.resid_out.img", 3): X0, ("blocks.1.resid_out.img", 3): X1},   # [sample, channel] each
        {"color": color_labels, "size": size_labels},                            # [sample] each
    )
    grid.best("color", stream="img")      # {'site': ..., 'step': 3, 'accuracy': 0.99, ...}
    grid.grid("color", "img")             # (blocks, steps, accuracy [block, step])
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from latentlens.errors import ConfigError

Cell = tuple[str, int]  # (site, step)
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default).

    Example: ``wilson_interval(95, 100)`` → ``(0.888, 0.978)``.
    """
    if total <= 0:
        return (math.nan, math.nan)
    p = correct / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return (low, high)


def site_block(site: str) -> int | None:
    """``"blocks.3.resid_out.img"`` → 3; ``None`` for sites outside the blocks."""
    match = _BLOCK_RE.search(site)
    return int(match.group(1)) if match else None


def site_stream(site: str) -> str:
    """``"img"`` or ``"txt"`` from a site name (``text.*`` sites count as ``"txt"``)."""
    if site.startswith("text."):
        return "txt"
    last = site.rsplit(".", 1)[-1]
    return last if last in ("img", "txt") else ""


# --------------------------------------------------------------------------- solver
def fit_softmax_batched(
    X: torch.Tensor,  # [cell, sample, channel], already standardised
    targets: Sequence[torch.Tensor],  # each [sample] int64 class indices (shared by every cell)
    n_classes: Sequence[int],
    C: float = 1.0,
    max_iter: int = 200,
    tol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fit independent L2-regularised softmax regressions for every cell and head in one L-BFGS solve.

    Returns ``W`` ``[cells, d, sum(n_classes)]``, ``b`` ``[cells, sum(n_classes)]`` and the iteration count.
    Head ``h`` owns columns ``offsets[h] : offsets[h] + n_classes[h]``. Loss and gradient are computed
    in closed form on a padded ``[cell, sample, attribute, class]`` logit tensor (no autograd), so one
    evaluation is two batched matrix products.
    """
    cells, n, d = X.shape
    heads = len(n_classes)
    kmax = int(max(n_classes))
    dtype = X.dtype
    Xb = torch.cat([X, torch.ones(cells, n, 1, dtype=dtype)], dim=-1)  # [cell, sample, channel+1]
    XbT = Xb.transpose(1, 2).contiguous()  # [cell, channel+1, sample]
    # Padded classes get a large negative logit offset, hence probability 0 and zero gradient.
    pad = torch.zeros(heads, kmax, dtype=dtype)
    for h, k in enumerate(n_classes):
        pad[h, k:] = -1e4
    onehot = torch.zeros(n, heads, kmax, dtype=dtype)  # [sample, attribute, class]
    for h, t in enumerate(targets):
        onehot[torch.arange(n), h, t] = 1.0
    params = torch.zeros(cells, d + 1, heads * kmax, dtype=dtype)  # last row = intercept
    params.requires_grad_(True)
    penalty_mask = torch.ones(1, d + 1, 1, dtype=dtype)
    penalty_mask[:, d] = 0.0  # intercept not penalised
    # The objective divided by C * n: same minimiser, gradients of order 1 whatever n is.
    ridge = 1.0 / (C * n)
    optimizer = torch.optim.LBFGS(
        [params],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        with torch.no_grad():
            logits = torch.bmm(Xb, params).view(cells, n, heads, kmax) + pad  # [cell, sample, attribute, class]
            # log-softmax by hand: torch.log_softmax is slow over a short last dim.
            z = logits - logits.amax(dim=-1, keepdim=True)
            e = z.exp()
            total = e.sum(dim=-1, keepdim=True)  # [cell, sample, attribute, 1]
            nll = total.log().sum() - (z * onehot).sum()
            weights = params * penalty_mask
            loss = nll / n + 0.5 * ridge * weights.pow(2).sum()
            residual = (e / total - onehot).view(cells, n, heads * kmax)  # [cell, sample, attribute*class]
            grad = torch.bmm(XbT, residual) / n + ridge * weights  # [cell, channel+1, attribute*class]
            for h, k in enumerate(n_classes):
                grad[:, :, h * kmax + k : (h + 1) * kmax] = 0.0
        params.grad = grad
        return loss

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    n_iter = int(state.get("n_iter", 0))
    full = params.detach().view(cells, d + 1, heads, kmax)
    columns = [full[:, :, h, :k] for h, k in enumerate(n_classes)]
    packed = torch.cat(columns, dim=-1)  # [cells, d + 1, sum(n_classes)]
    return packed[:, :d].contiguous(), packed[:, d].contiguous(), n_iter


def _standardise(X: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Z-score every cell's features with the training rows' mean and std (constant features → std 1)."""
    Xt = X[:, train]  # [cell, sample, channel]
    mean = Xt.mean(dim=1, keepdim=True)  # [cell, 1, channel]
    std = Xt.std(dim=1, keepdim=True, unbiased=False)
    std = torch.where(std > 1e-8 * (1 + mean.abs()), std, torch.ones_like(std))
    return (X - mean) / std, mean, std


# ----------------------------------------------------------------------- one probe
class LinearProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression (scikit-learn's objective) solved with batched L-BFGS in torch.

    Parameters:
        C: inverse regularisation strength, as in ``sklearn.linear_model.LogisticRegression``.
        max_iter, tol: L-BFGS iteration cap and gradient tolerance.
        standardize: z-score features before fitting (the returned ``coef_`` is in the original units).

    Fitted: ``classes_``, ``coef_`` ``[class, channel]``, ``intercept_`` ``[class]``,
    ``n_features_in_``, ``n_iter_``. Unlike scikit-learn, binary problems keep two rows
    (the softmax form); ``coef_[1] - coef_[0]`` is the binary direction.

    Example::

        probe = LinearProbe(C=1.0).fit(X_train, y_train)
        probe.score(X_test, y_test)
    """

    def __init__(self, C: float = 1.0, max_iter: int = 500, tol: float = 1e-6, standardize: bool = True) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize

    def fit(self, X: Any, y: Any) -> LinearProbe:
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"LinearProbe needs at least 2 classes in y, got 1 class: {self.classes_[0]!r}.")
        if not (isinstance(self.C, (int, float)) and self.C > 0):
            raise ValueError(f"C must be a positive number, got {self.C!r}.")
        Xt = torch.from_numpy(np.array(X, dtype=np.float64, copy=True)).unsqueeze(0)  # [1, sample, channel]
        n, d = X.shape
        if self.standardize:
            Xs, mean, std = _standardise(Xt, torch.ones(n, dtype=torch.bool))
        else:
            Xs, mean, std = Xt, torch.zeros(1, 1, d, dtype=Xt.dtype), torch.ones(1, 1, d, dtype=Xt.dtype)
        W, b, self.n_iter_ = fit_softmax_batched(
            Xs,
            [torch.from_numpy(y_index.astype(np.int64))],
            [len(self.classes_)],
            C=float(self.C),
            max_iter=self.max_iter,
            tol=self.tol,
        )
        W = W[0] / std[0, 0].unsqueeze(1)  # [channel, class] in original units
        b = b[0] - (mean[0, 0] @ W)  # [class]
        b = b - b.mean()  # softmax is invariant to a shift; centre for comparability
        self.coef_ = W.T.numpy().copy()  # [class, channel]
        self.intercept_ = b.numpy().copy()  # [class]
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        scores = X @ self.coef_.T + self.intercept_  # [sample, class]
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        scores = scores - scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# ------------------------------------------------------------------------ the grid
@dataclass
class ProbeCell:
    """One fitted (attribute, site, step) cell of a probe grid."""

    attribute: str
    site: str
    stream: str
    block: int | None
    step: int
    accuracy: float
    ci_low: float
    ci_high: float
    control_accuracy: float
    selectivity: float
    train_accuracy: float
    n_train: int
    n_test: int
    nan: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def control_labels(y: np.ndarray, types: Sequence[Hashable], n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Hewitt & Liang control task: each type gets one class drawn from ``y``'s empirical distribution."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    prior = counts / counts.sum()
    type_ids: dict[Hashable, int] = {}
    ids = np.array([type_ids.setdefault(t, len(type_ids)) for t in types])
    assignment = rng.choice(n_classes, size=len(type_ids), p=prior)
    return assignment[ids]


def grouped_split(n: int, test_size: float, groups: Sequence[Hashable] | None, seed: int) -> np.ndarray:
    """Boolean ``[sample]`` test mask; whole groups go to one side."""
    rng = np.random.Generator(np.random.PCG64(seed))
    if groups is None:
        groups = range(n)
    group_ids: dict[Hashable, int] = {}
    ids = np.array([group_ids.setdefault(g, len(group_ids)) for g in groups])
    order = rng.permutation(len(group_ids))
    sizes = np.bincount(ids, minlength=len(group_ids))
    cumulative = np.cumsum(sizes[order])
    n_test_groups = int(np.searchsorted(cumulative, test_size * n)) + 1
    test_groups = np.zeros(len(group_ids), dtype=bool)
    test_groups[order[:n_test_groups]] = True
    return test_groups[ids]


class LinearProbeGrid(BaseEstimator):
    """Linear probes for every (site, step) cell and every attribute, fitted in one batched solve.

    Parameters:
        C: inverse L2 strength (scikit-learn convention) on standardised features.
        test_size: held-out fraction (one split shared by all cells and attributes).
        control: also fit the Hewitt & Liang control task and report selectivity.
        max_features: cells wider than this are first projected on their top ``max_features``
            principal components (fitted on the training rows; never more than the training rows
            minus one); ``None`` keeps every feature.
        max_iter, tol: L-BFGS settings.
        random_state: seeds the split and the control labels.
        dtype: ``torch.float32`` (fast) or ``torch.float64``.

    Fitted state: ``cells_`` (list of (site, step)), ``attributes_`` (attribute -> class names),
    ``results_`` (list of :class:`ProbeCell`), ``coef_`` ((site, step) -> attribute ->
    ``[class, channel]`` in original units), ``intercept_``, ``test_mask_``,
    ``nan_cells_`` (list of dicts with site, step and NaN count), ``n_iter_``.
    """

    def __init__(
        self,
        C: float = 1.0,
        test_size: float = 0.2,
        control: bool = True,
        max_features: int | None = 256,
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.C = C
        self.test_size = test_size
        self.control = control
        self.max_features = max_features
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.dtype = dtype

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        features: Mapping[Cell, Any],
        labels: Mapping[str, Sequence[Any]],
        groups: Sequence[Hashable] | None = None,
        types: Sequence[Hashable] | None = None,
    ) -> LinearProbeGrid:
        """Fit every cell.

        Args:
            features: (site, step) -> ``[sample, channel]`` array or tensor.
            labels: attribute -> ``[sample]`` class labels (strings or ints).
            groups: optional ``[sample]`` group ids kept on one side of the split (e.g. prompts).
            types: optional ``[sample]`` type ids for the control task (default: the tuple of
                all attribute labels of the sample).
        """
        if not features:
            raise ConfigError("LinearProbeGrid.fit() got no feature cells; pass {(site, step): [n, d] array}.")
        if not labels:
            raise ConfigError("LinearProbeGrid.fit() got no labels; pass {attribute: [n] labels}.")
        if not 0.0 < self.test_size < 1.0:
            raise ConfigError(f"test_size must be between 0 and 1, got {self.test_size!r}.")
        cells = list(features)
        n = None
        for cell in cells:
            rows = len(features[cell])
            if n is None:
                n = rows
            elif rows != n:
                raise ConfigError(
                    f"Cell {cell} has {rows} samples but the first cell has {n}; every cell needs the same samples."
                )
        assert n is not None
        self.attributes_: dict[str, list[Any]] = {}
        targets: list[np.ndarray] = []
        for attribute, given in labels.items():
            values = np.asarray(given)
            if len(values) != n:
                raise ConfigError(
                    f"Attribute {attribute!r} has {len(values)} labels but the features have {n} samples."
                )
            classes, y = np.unique(values, return_inverse=True)
            if len(classes) < 2:
                raise ConfigError(
                    f"Attribute {attribute!r} has a single class ({classes[0]!r}); a probe needs at least 2."
                )
            self.attributes_[attribute] = classes.tolist()
            targets.append(y.astype(np.int64))
        if groups is not None and len(groups) != n:
            raise ConfigError(f"groups has {len(groups)} entries but the features have {n} samples.")
        test = grouped_split(n, self.test_size, groups, self.random_state)
        train = ~test
        for attribute, y in zip(self.attributes_, targets):
            missing = set(range(len(self.attributes_[attribute]))) - set(y[train].tolist())
            if missing:
                names = [self.attributes_[attribute][i] for i in sorted(missing)]
                raise ConfigError(
                    f"Attribute {attribute!r} has no training sample of class {names}; record more samples per class."
                )
        if types is None:
            types = list(zip(*(np.asarray(v).tolist() for v in labels.values())))
        rng = np.random.Generator(np.random.PCG64(self.random_state + 1))
        controls = (
            [control_labels(y, types, len(self.attributes_[a]), rng) for a, y in zip(self.attributes_, targets)]
            if self.control
            else []
        )
        self.test_mask_ = test
        self.cells_ = cells
        self.coef_: dict[Cell, dict[str, np.ndarray]] = {}
        self.intercept_: dict[Cell, dict[str, np.ndarray]] = {}
        self.nan_cells_: list[dict[str, Any]] = []
        self.results_: list[ProbeCell] = []
        self.n_iter_ = 0

        # Group cells by width, so each group stacks into one tensor.
        by_width: dict[int, list[Cell]] = {}
        finite: dict[Cell, torch.Tensor] = {}
        for cell in cells:
            x = torch.as_tensor(
                np.asarray(features[cell]) if not isinstance(features[cell], torch.Tensor) else features[cell]
            )
            if x.ndim != 2:
                raise ConfigError(
                    f"Cell {cell} has features of shape {tuple(x.shape)}; expected [n_samples, n_features]."
                )
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                self.nan_cells_.append({"site": cell[0], "step": int(cell[1]), "nan_count": bad})
                continue
            finite[cell] = x
            by_width.setdefault(int(x.shape[1]), []).append(cell)

        n_classes = [len(c) for c in self.attributes_.values()]
        heads_y = [torch.from_numpy(y[train]) for y in targets] + [torch.from_numpy(c[train]) for c in controls]
        heads_k = n_classes + (n_classes if self.control else [])
        offsets = np.concatenate([[0], np.cumsum(heads_k)]).astype(int)
        fitted: dict[Cell, list[np.ndarray]] = {}  # cell -> predicted class per head, [sample] each
        train_t = torch.from_numpy(train)
        for width, group in by_width.items():
            X = torch.stack([finite[c].to(self.dtype) for c in group])  # [cell, sample, channel]
            Xs, mean, std = _standardise(X, train_t)
            basis = None
            components = self.max_features
            if components is not None:
                # Centred training rows span at most n_train - 1 directions; a component beyond that
                # is numerical noise, and whitening it to unit variance wrecks the held-out rows
                # (48 samples: mean accuracy 0.30 over the image cells instead of 0.6).
                components = min(components, max(1, int(train.sum()) - 1))
            if components is not None and width > components:
                # Top principal components of the standardised training rows, per cell.
                _, _, V = torch.linalg.svd(Xs[:, train_t], full_matrices=False)  # V: [cells, min(n,d), d]
                basis = V[:, :components].transpose(1, 2)  # [cell, channel, component]
                Xs = torch.bmm(Xs, basis)  # [cell, sample, component]
                Xs, mean2, std2 = _standardise(Xs, train_t)
            W, b, n_iter = fit_softmax_batched(
                Xs[:, train_t].contiguous(), heads_y, heads_k, C=float(self.C), max_iter=self.max_iter, tol=self.tol
            )
            self.n_iter_ = max(self.n_iter_, n_iter)
            logits = torch.bmm(Xs, W) + b.unsqueeze(1)  # [cell, sample, class]
            # Weights back in the original feature units. With z1 = (x - m) / s, z2 = z1 @ B and
            # z3 = (z2 - m2) / s2: logits = x @ Wo + b - m @ Wo - m2 @ (W / s2), Wo = (B @ (W / s2)) / s.
            bo = b
            Wz = W
            if basis is not None:
                Wz = W / std2.transpose(1, 2)  # [cell, component, class]
                bo = bo - torch.bmm(mean2, Wz).squeeze(1)
                Wz = torch.bmm(basis, Wz)  # [cell, channel, class]
            Wo = Wz / std.transpose(1, 2)  # [cell, channel, class]
            bo = bo - torch.bmm(mean, Wo).squeeze(1)  # [cell, class]
            for i, cell in enumerate(group):
                fitted[cell] = [
                    logits[i, :, offsets[h] : offsets[h] + k].argmax(-1).numpy() for h, k in enumerate(heads_k)
                ]
                self.coef_[cell] = {}
                self.intercept_[cell] = {}
                for h, (a, k) in enumerate(zip(self.attributes_, n_classes)):
                    cols = slice(offsets[h], offsets[h] + k)
                    self.coef_[cell][a] = Wo[i, :, cols].T.numpy().astype(np.float64)  # [class, channel]
                    intercept = bo[i, cols].numpy().astype(np.float64)
                    self.intercept_[cell][a] = intercept - intercept.mean()

        n_test, n_train = int(test.sum()), int(train.sum())
        n_attr = len(self.attributes_)
        for cell in cells:
            site, step = cell
            base: dict[str, Any] = dict(site=site, stream=site_stream(site), block=site_block(site), step=int(step))
            for h, attribute in enumerate(self.attributes_):
                if cell not in fitted:
                    self.results_.append(
                        ProbeCell(
                            attribute=attribute,
                            **base,
                            accuracy=math.nan,
                            ci_low=math.nan,
                            ci_high=math.nan,
                            control_accuracy=math.nan,
                            selectivity=math.nan,
                            train_accuracy=math.nan,
                            n_train=n_train,
                            n_test=n_test,
                            nan=True,
                        )
                    )
                    continue
                preds = fitted[cell]
                y = targets[h]
                correct = int((preds[h][test] == y[test]).sum())
                accuracy = correct / n_test
                low, high = wilson_interval(correct, n_test)
                train_accuracy = float((preds[h][train] == y[train]).mean())
                if self.control:
                    control = float((preds[n_attr + h][test] == controls[h][test]).mean())
                else:
                    control = math.nan
                self.results_.append(
                    ProbeCell(
                        attribute=attribute,
                        **base,
                        accuracy=accuracy,
                        ci_low=low,
                        ci_high=high,
                        control_accuracy=control,
                        selectivity=accuracy - control if self.control else math.nan,
                        train_accuracy=train_accuracy,
                        n_train=n_train,
                        n_test=n_test,
                    )
                )
        return self

    # -------------------------------------------------------------- results
    def records(self) -> list[dict[str, Any]]:
        """Every fitted cell as a plain dict (JSON-ready)."""
        check_is_fitted(self, "results_")
        return [r.as_dict() for r in self.results_]

    def best(self, attribute: str, stream: str | None = None) -> dict[str, Any] | None:
        """The cell with the highest held-out accuracy (ties: earlier block, then earlier step)."""
        check_is_fitted(self, "results_")
        self._check_attribute(attribute)
        rows = [
            r
            for r in self.results_
            if r.attribute == attribute and not r.nan and (stream is None or r.stream == stream)
        ]
        if not rows:
            return None
        best = max(
            rows,
            key=lambda r: (
                r.accuracy,
                r.selectivity if not math.isnan(r.selectivity) else 0.0,
                -(r.block if r.block is not None else -1),
                -r.step,
            ),
        )
        return best.as_dict()

    def grid(self, attribute: str, stream: str, value: str = "accuracy") -> tuple[list[int], list[int], np.ndarray]:
        """``(blocks, steps, table [block, step])`` of ``value`` for one attribute and stream (NaN where missing)."""
        check_is_fitted(self, "results_")
        self._check_attribute(attribute)
        rows = [r for r in self.results_ if r.attribute == attribute and r.stream == stream and r.block is not None]
        if not rows:
            streams = sorted({r.stream for r in self.results_})
            raise ConfigError(f"No block cells for stream {stream!r}; the grid has streams: {', '.join(streams)}.")
        blocks = sorted({r.block for r in rows if r.block is not None})
        steps = sorted({r.step for r in rows})
        table = np.full((len(blocks), len(steps)), np.nan)
        for r in rows:
            if r.block is not None:  # always: rows hold block cells only
                table[blocks.index(r.block), steps.index(r.step)] = getattr(r, value)
        return blocks, steps, table

    def direction(self, attribute: str, site: str, step: int, to: str, from_: str | None = None) -> np.ndarray:
        """The probe's weight direction toward class ``to`` (minus ``from_`` when given), ``[channel]``."""
        check_is_fitted(self, "coef_")
        self._check_attribute(attribute)
        if (site, step) not in self.coef_:
            raise ConfigError(f"No fitted probe at site {site!r}, step {step}.")
        classes = [str(c) for c in self.attributes_[attribute]]
        coef = self.coef_[(site, step)][attribute]
        for name in (to, from_):
            if name is not None and str(name) not in classes:
                raise ConfigError(f"Attribute {attribute!r} has no class {name!r}; classes: {', '.join(classes)}.")
        w = coef[classes.index(str(to))]
        if from_ is not None:
            w = w - coef[classes.index(str(from_))]
        else:
            w = w - coef.mean(axis=0)
        return w

    def _check_attribute(self, attribute: str) -> None:
        if attribute not in self.attributes_:
            raise ConfigError(f"The grid has no attribute {attribute!r}; it has: {', '.join(self.attributes_)}.")
