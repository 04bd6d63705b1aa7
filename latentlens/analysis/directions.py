"""Directions from data: class-mean differences, probe weights, PCA components, text-space prompt pairs.

Every function returns a :class:`latentlens.Direction` carrying the site, steps, tokens and a
provenance record, ready for ``latentlens.steer`` (image/text stream sites) or the EMS editor
(``text.tokens`` / ``text.pooled``).

Example::

    from latentlens.analysis.directions import class_mean_direction, text_direction
    d = class_mean_direction(X, colors, to="blue", from_="red", site="blocks.2.resid_out.img", steps=[4, 8])
    with latentlens.steer(pipe, d, alpha=1.0):
        pipe("a large red circle in the center on a gray background")
    t = text_direction(pipe, [("a red circle", "a blue circle"), ("red square", "blue square")])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch

from latentlens.adapters import edit_model_for
from latentlens.direction import Direction
from latentlens.text import changed_tokens
from latentlens.errors import ConfigError

Labels: TypeAlias = Sequence[Any] | np.ndarray  # one label per sample


def _labels_index(labels: Labels, value: Any, what: str) -> np.ndarray:
    array = np.asarray(labels)
    mask = array == value
    if not mask.any():
        present = ", ".join(sorted(map(str, np.unique(array))))
        raise ConfigError(f"No sample has {what} {value!r}; the labels present are: {present}.")
    return mask


def _balanced_difference(
    X: np.ndarray,
    labels: Labels,
    to: Any,
    from_: Any | None,
    adjust_for: Mapping[str, Labels],
    what: str,
) -> np.ndarray:
    """``to − from_`` effect of a least-squares fit ``X ≈ b + Σ one-hot(attribute)``: the other attributes held fixed."""
    n = len(X)
    columns = [np.ones(n)]
    for name, values in adjust_for.items():
        codes = np.asarray([str(v) for v in values])
        if len(codes) != n:
            raise ConfigError(f"adjust_for[{name!r}] has {len(codes)} labels for {n} samples; give one per sample.")
        columns += [(codes == level).astype(np.float64) for level in sorted(set(codes))[1:]]  # first = reference
    own = np.asarray([str(v) for v in labels])
    levels = sorted(set(own))
    first = len(columns)
    columns += [(own == level).astype(np.float64) for level in levels[1:]]
    design = np.column_stack(columns)  # [sample, param]
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise ConfigError(
            f"The {what} labels are confounded with adjust_for={sorted(adjust_for)} (the design matrix is "
            "rank-deficient); drop an attribute from adjust_for or record more varied samples."
        )
    coef, *_ = np.linalg.lstsq(design, X.reshape(n, -1), rcond=None)  # [param, channel]

    def effect(level: str) -> np.ndarray:  # that level's shift relative to the reference level
        return np.zeros(coef.shape[1]) if level == levels[0] else coef[first + levels.index(level) - 1]

    if from_ is None:  # minus the mean of the other classes
        baseline = np.mean([effect(level) for level in levels if level != str(to)], axis=0)
    else:
        baseline = effect(str(from_))
    return (effect(str(to)) - baseline).reshape(X.shape[1:])


def class_mean_direction(
    X: Any,  # [sample, channel] or [sample, token, channel]
    labels: Labels,
    to: Any,
    from_: Any | None = None,
    *,
    site: str,
    steps: Sequence[int] | None = None,
    tokens: Sequence[int] | None = None,
    attribute: str | None = None,
    adjust_for: Mapping[str, Labels] | None = None,
    **provenance: Any,
) -> Direction:
    """``mean(X[labels == to]) - mean(X[labels == from_])`` (``from_=None``: minus the mean of the other classes).

    The vector keeps its natural scale (the distance between the class means), so ``alpha=1`` in
    ``steer`` moves an average ``from_`` sample onto the average ``to`` sample.

    ``X`` of shape ``[sample, token, channel]`` gives a token-wise direction ``[token, channel]`` (one difference per
    token position; use samples whose prompts share one token layout). ``adjust_for`` maps other
    attributes to their per-sample labels: the difference is then the ``to``/``from_`` effect of a
    least-squares fit on one-hot codes of all attributes, so a class imbalance in the other
    attributes (more red circles than blue ones) does not leak into the direction.

    Example::

        d = class_mean_direction(X, labels["color"], to="blue", from_="red", site="blocks.0.resid_in.txt",
                                 adjust_for={a: labels[a] for a in ("shape", "size", "position")})
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim not in (2, 3) or len(X) != len(labels):
        raise ConfigError(
            f"X must be [n_samples, dim] or [n_samples, tokens, dim] with one label per row; got X {X.shape} "
            f"and {len(labels)} labels."
        )
    what = attribute or "label"
    to_mask = _labels_index(labels, to, what)
    from_mask = _labels_index(labels, from_, what) if from_ is not None else ~to_mask
    if not from_mask.any():
        raise ConfigError(f"Every sample has {what} {to!r}; a class-mean difference needs another class.")
    if adjust_for:
        vector = _balanced_difference(X, labels, to, from_, dict(adjust_for), what)
    else:
        vector = X[to_mask].mean(0) - X[from_mask].mean(0)  # [channel] or [token, channel]
    record: dict[str, Any] = {
        "method": "class_mean",
        "attribute": attribute,
        "from": None if from_ is None else str(from_),
        "to": str(to),
        "n_to": int(to_mask.sum()),
        "n_from": int(from_mask.sum()),
    }
    if adjust_for:
        record["adjusted_for"] = sorted(adjust_for)
    record.update(provenance)
    return Direction(torch.from_numpy(vector), site=site, steps=steps, tokens=tokens, provenance=record)


def probe_direction(
    grid: Any,
    attribute: str,
    site: str,
    step: int,
    to: Any,
    from_: Any | None = None,
    *,
    steps: Sequence[int] | None = None,
    tokens: Sequence[int] | None = None,
    **provenance: Any,
) -> Direction:
    """The weight direction of a fitted :class:`~latentlens.analysis.probes.LinearProbeGrid` cell.

    ``to - from_`` rows of the softmax weights (``from_=None``: ``to`` minus the mean row), in the
    original feature units. Its scale is the probe's, not the data's: normalise it and choose alpha.
    """
    vector = grid.direction(attribute, site, step, to=to, from_=from_)
    row = next((r for r in grid.results_ if r.attribute == attribute and r.site == site and r.step == step), None)
    record = {
        "method": "probe",
        "attribute": attribute,
        "from": None if from_ is None else str(from_),
        "to": str(to),
        "probe_step": int(step),
        "accuracy": None if row is None else row.accuracy,
        "selectivity": None if row is None else row.selectivity,
        "C": grid.C,
    }
    record.update(provenance)
    return Direction(
        torch.from_numpy(np.asarray(vector, dtype=np.float64)),
        site=site,
        steps=[int(step)] if steps is None else steps,
        tokens=tokens,
        provenance=record,
    )


def pca_direction(
    pca: Any,
    component: int,
    *,
    site: str,
    steps: Sequence[int] | None = None,
    tokens: Sequence[int] | None = None,
    scale: str = "std",
    **provenance: Any,
) -> Direction:
    """Principal component ``component`` of a fitted PCA (``scale="std"``: one standard deviation long; ``"unit"``)."""
    if not 0 <= component < len(pca.components_):
        raise ConfigError(f"component {component} does not exist; the PCA kept {len(pca.components_)} components.")
    vector = np.asarray(pca.components_[component], dtype=np.float64)
    if scale == "std":
        vector = vector * float(np.sqrt(pca.explained_variance_[component]))
    elif scale != "unit":
        raise ConfigError(f"scale must be 'std' or 'unit', got {scale!r}.")
    record = {
        "method": "pca",
        "component": int(component),
        "explained_variance_ratio": float(pca.explained_variance_ratio_[component]),
    }
    record.update(provenance)
    return Direction(torch.from_numpy(vector), site=site, steps=steps, tokens=tokens, provenance=record)


def text_direction(
    pipe: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    where: str = "changed",
    tokens: Sequence[int] | None = None,
    attribute: str | None = None,
    **provenance: Any,
) -> Direction:
    """A text-space direction from prompt pairs: ``E(target) - E(source)``, averaged over pairs (templates).

    Args:
        pipe: a supported pipeline (toy, SD3, Flux); its own text encoder(s) are used.
        pairs: ``[(source, target), ...]``, e.g. ``[("a red circle", "a blue circle"), ...]``.
        where: ``"changed"`` — the mean embedding of the tokens of the changed words (target minus source;
            ``site="text.tokens"``); ``"all"`` — every token position, prompts padded to the same length
            (``text.tokens``); ``"pooled"`` — the pooled embedding (``text.pooled``).
        tokens: token positions to store in the Direction (where the editor adds it); ``None`` = all.

    Example: ``text_direction(pipe, [(f"a red {s}", f"a blue {s}") for s in ("circle", "square")])``.
    """
    if not pairs:
        raise ConfigError("text_direction needs at least one (source, target) prompt pair.")
    if where not in ("changed", "all", "pooled"):
        raise ConfigError(f"where must be 'changed', 'all' or 'pooled', got {where!r}.")
    model = edit_model_for(pipe)
    diffs: list[torch.Tensor] = []
    positions: list[tuple[list[int], list[int]]] = []
    with torch.no_grad():
        for source, target in pairs:
            embeds = model.encode([source, target])
            if where == "pooled":
                if embeds.pooled is None:
                    raise ConfigError("This pipeline has no pooled text embedding; use where='changed' or 'all'.")
                diffs.append((embeds.pooled[1] - embeds.pooled[0]).float())
                continue
            if where == "all":
                diffs.append((embeds.tokens[1] - embeds.tokens[0]).float().mean(0))
                continue
            src_pos, tgt_pos = changed_tokens(model, source, target)
            if not src_pos or not tgt_pos:
                raise ConfigError(
                    f"The prompts {source!r} and {target!r} differ in no token; each pair must change a word."
                )
            positions.append((src_pos, tgt_pos))
            diffs.append(embeds.tokens[1, tgt_pos].float().mean(0) - embeds.tokens[0, src_pos].float().mean(0))
    vector = torch.stack(diffs).mean(0)  # [channel]
    record: dict[str, Any] = {
        "method": "text_pairs",
        "where": where,
        "attribute": attribute,
        "n_pairs": len(pairs),
        "pairs": [list(p) for p in pairs[:20]],
    }
    if positions:
        record["changed_tokens"] = [list(map(list, p)) for p in positions[:20]]
    record.update(provenance)
    site = "text.pooled" if where == "pooled" else "text.tokens"
    return Direction(vector, site=site, steps=None, tokens=tokens, provenance=record)
