"""Directions that edit: build the token-wise text-stream edit directions and measure what every direction does.

``analyze`` saves class-mean directions at the best probe cells; a probe cell says where an
attribute can be *read*, not where steering it changes the image (on the toy MM-DiT the image
stream never edits colour: joint attention re-reads it from the text tokens). This module adds
edit directions per attribute — differences of class means per text-token position at the first
text site (block 0's text input when recorded), other attributes regressed out, over samples whose
prompt is the canonical caption (one token layout): one per value (value vs. the rest,
``edit/color/blue``) and one per ordered pair of values (``edit/color/red-to-blue``, steered on
samples that are red) — and validates any direction by steering real prompts of the run with it:

* shapes world (labels the oracle reads): ``success`` = fraction of samples whose attribute was
  another value and that the oracle now reads as the direction's value, ``kept`` = fraction whose
  other attributes are still the prompt's (a from–to direction: samples whose attribute is its
  ``from`` value); ``score = success × min(kept)``. :func:`target_totals` pools the from–to
  reports per target value: the edit the dashboard picks by each sample's own label. The check stops early
  (``early_stop``, the default): samples are steered :data:`CHUNK` at a time, and a direction stops
  as soon as the one-sided 95 % Clopper–Pearson upper bound of its success or of one kept fraction
  is below the goal :data:`GOAL` (it cannot edit the run's samples with ≥ 90 % success and ≥ 90 %
  kept); a token-wise direction climbs :data:`EDIT_ALPHAS`, a larger alpha only when the smaller ones miss
  the goal. The report states the samples actually steered (``n``), ``n_planned`` and ``stopped_early``.
* elsewhere: the patching effect measure toward the value's mean image,
  ``(d(x, x̄_to) − d(x_steered, x̄_to)) / d(x, x̄_to)``, averaged over samples (``score``).

Example::

    from latentlens.analysis.validate import validate_direction
    report = validate_direction(pipe, d, prompts, seeds, labels, attribute="color", to="blue", n=16)
    report["score"], report["success"], report["kept"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latentlens.errors import ConfigError

EDIT_SITES = ("blocks.0.resid_in.txt", "text.tokens", "blocks.0.resid_out.txt")
EDIT_ALPHA = 1.0  # token-wise class means keep their natural scale: alpha 1 moves a sample onto the class mean
# the ladder a token-wise direction climbs (each rung only when the one below misses the goal): on toy v2 the
# colour directions that meet it at 1.5 (green, blue) lose shape at 2, and purple needs 2
EDIT_ALPHAS = (EDIT_ALPHA, 1.5 * EDIT_ALPHA, 2 * EDIT_ALPHA)
MEAN_ALPHA = 4.0  # token-mean class means need a push (benchmarks/bench_steering.py)
CFG = "cond"  # the directions come from captions: steer only the conditional half of a CFG batch
GOAL = 0.9  # issue 15's goal for an edit: success and every kept attribute at least 0.9
CHUNK = 4  # samples steered between two early-stopping checks
CONFIDENCE = 0.95  # of the one-sided upper bound the early stop compares with GOAL


def upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper–Pearson upper confidence bound of a proportion of ``k`` hits in ``n`` trials.

    Example: ``upper_bound(0, 4)`` → 0.527 (no hit in 4 cannot support a 90 % rate).
    """
    if n <= 0 or k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, k + 1, n - k))


def meets_goal(report: Mapping[str, Any], goal: float = GOAL) -> bool:
    """Whether an oracle report edits with success and every kept fraction at least ``goal``."""
    kept = report.get("kept") or {}
    return report.get("success") is not None and report["success"] >= goal and min(kept.values(), default=1.0) >= goal


def is_shapes_world(labels: Mapping[str, Sequence[Any]]) -> bool:
    """Whether ``labels`` hold every shapes-world attribute with values the oracle knows."""
    from latentlens import shapes

    return all(a in labels and set(map(str, labels[a])) <= set(shapes.VALUES[a]) for a in shapes.ATTRIBUTES)


def canonical_mask(prompts: Sequence[str], labels: Mapping[str, Sequence[Any]]) -> np.ndarray:
    """``[sample]`` bool: the sample's prompt is the canonical caption of its labels (one token layout)."""
    from latentlens import shapes

    out = []
    for i, prompt in enumerate(prompts):
        combo = shapes.Attributes(**{a: str(labels[a][i]) for a in shapes.ATTRIBUTES})
        out.append(prompt == shapes.canonical_caption(combo))
    return np.asarray(out, dtype=bool)


def edit_directions(
    X: np.ndarray,  # [sample, token, channel] at ``site``, one token layout
    labels: Mapping[str, Sequence[Any]],
    site: str,
    **provenance: Any,
) -> dict[str, Any]:
    """Token-wise class means, other attributes regressed out when there are enough samples (else plain class means):
    ``edit/<attribute>/<value>`` (value vs. the rest) and ``edit/<attribute>/<from>-to-<to>`` for every ordered pair
    of values present (the difference of the two values' means: it also removes the sample's own value, so it
    edits where value vs. the rest falls short; on toy v2 every colour pair at alpha 1)."""
    from latentlens.analysis.directions import class_mean_direction

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ConfigError(f"edit_directions needs token-wise activations [n, tokens, channel]; got shape {X.shape}.")
    out: dict[str, Any] = {}
    for attribute, raw in labels.items():
        values = np.asarray([str(v) for v in raw])
        others = {a: np.asarray([str(v) for v in labels[a]]) for a in labels if a != attribute}
        levels = 1 + sum(len(set(column)) - 1 for column in [values, *others.values()])
        adjust = others if len(values) > 2 * levels else None
        present = sorted(set(values))
        pairs = [(None, value) for value in present] + [(a, b) for a in present for b in present if a != b]
        for from_, to in pairs:
            if from_ is None and (values != to).sum() < 1:
                continue  # one value only: nothing to contrast it with
            out[edit_name(attribute, to, from_)] = class_mean_direction(
                X,
                values,
                to=to,
                from_=from_,
                site=site,
                steps=None,
                attribute=attribute,
                adjust_for=adjust,
                recipe="token-wise text-stream class means (canonical captions)",
                **provenance,
            )
    return out


def edit_name(attribute: str, to: str, from_: str | None = None) -> str:
    """The saved name of a token-wise edit direction: ``edit/color/blue`` (value vs. the rest) or
    ``edit/color/red-to-blue`` (from one value to another: steer samples that have ``from_``)."""
    return f"edit/{attribute}/{to}" if from_ is None else f"edit/{attribute}/{from_}-to-{to}"


def validate_direction(
    pipe: Any,
    direction: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    labels: Mapping[str, Sequence[Any]],
    *,
    attribute: str,
    to: str,
    n: int = 16,
    alpha: float | None = None,
    cfg: str = CFG,
    num_inference_steps: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    early_stop: bool = True,
) -> dict[str, Any]:
    """Steer up to ``n`` of the run's samples whose ``attribute`` is not ``to`` along ``direction`` and measure the edit.

    Returns ``{"measure": "oracle" | "pixel_effect", "score", "success", "kept", "n", "n_planned",
    "stopped_early", "alpha", "alphas_tried", "steered_images", "cfg", ...}`` (see the module docstring). ``alpha`` None tries
    1, 1.5 and 2 for token-wise directions (4 otherwise) and reports the best (with ``early_stop``, each only if the
    smaller ones miss the goal). A token-wise direction is checked on samples with its token layout (canonical
    captions in the shapes world): it adds one row per token position, so it only fits prompts laid out
    like that. ``early_stop=False`` steers all ``n`` samples at every alpha.
    """
    from latentlens.analysis.patching import generate_images, patch_effect
    from latentlens.interventions import steer

    values = np.asarray([str(v) for v in labels[attribute]])
    from_ = direction.provenance.get("from")
    token_wise = direction.token_rows is not None
    if alpha is None:
        alphas = list(EDIT_ALPHAS) if token_wise else [MEAN_ALPHA]
    else:
        alphas = [float(alpha)]
    rng = np.random.default_rng(seed)
    eligible = values != str(to)
    if from_ is not None:  # a from–to direction starts from its own value
        eligible &= values == str(from_)
    which = f"is {from_}" if from_ is not None else f"is not {to}"
    layout = ""
    if token_wise and is_shapes_world(labels):
        eligible &= canonical_mask(prompts, labels)
        layout = " and whose prompt is the canonical caption (the direction's token layout)"
    pool = np.flatnonzero(eligible)
    if len(pool) == 0:
        raise ConfigError(
            f"No sample's {attribute} {which}{layout}; there is nothing to edit toward {to!r} with this direction."
        )
    # in random order: an early stop after the first chunks judges a random subset, whatever the run's order
    chosen = rng.choice(pool, size=min(n, len(pool)), replace=False)
    kwargs = {} if num_inference_steps is None else {"num_inference_steps": int(num_inference_steps)}

    def run(idx: np.ndarray, steered: bool, alpha: float = 0.0) -> np.ndarray:
        images = []
        for start in range(0, len(idx), batch_size):
            part = idx[start : start + batch_size]
            p, s = [prompts[i] for i in part], [int(seeds[i]) for i in part]
            if steered:
                with steer(pipe, direction, alpha=alpha, cfg=cfg):
                    images.append(generate_images(pipe, p, s, kwargs))
            else:
                images.append(generate_images(pipe, p, s, kwargs))
        return np.concatenate(images)

    common: dict[str, Any] = {
        "n_planned": len(chosen),
        "cfg": cfg,
        "attribute": attribute,
        "to": str(to),
        "from": None if from_ is None else str(from_),
        "num_inference_steps": num_inference_steps,
        "samples": f"run samples whose {attribute} {which}{layout}",
    }
    # outside the shapes world: (the unsteered images, the mean image of samples that have ``to``)
    shapes_world = is_shapes_world(labels)
    pixel: tuple[np.ndarray, np.ndarray] | None = None
    if not shapes_world:
        targets = np.flatnonzero(values == str(to))
        reference = run(
            np.sort(rng.choice(targets, size=min(n, len(targets)), replace=False)),
            False,
        ).mean(axis=0)
        pixel = (run(chosen, False), reference)
    best: dict[str, Any] | None = None
    tried: list[float] = []
    steered_images = 0
    for a in alphas:
        tried.append(float(a))
        if shapes_world:
            report = {
                **common,
                "alpha": float(a),
                **_oracle_check(run, chosen, labels, attribute, str(to), a, early_stop),
            }
        else:
            assert pixel is not None  # set above whenever the labels are not the shapes world's
            base, reference = pixel
            steered = run(chosen, True, a)
            effect = patch_effect(base, np.broadcast_to(reference, base.shape), steered)
            report = {
                **common,
                "alpha": float(a),
                "n": len(chosen),
                "stopped_early": False,
                "measure": "pixel_effect",
                "success": None,
                "kept": None,
                "score": float(np.mean(effect)),
                "effect": float(np.mean(effect)),
            }
        steered_images += int(report["n"])
        if best is None or report["score"] > best["score"]:
            best = report
        if early_stop and shapes_world and meets_goal(report):
            break  # the goal is met: a larger alpha is not needed
    assert best is not None
    best["alphas_tried"] = tried
    best["steered_images"] = steered_images  # over every alpha tried
    return best


def _oracle_check(
    run: Any,
    chosen: np.ndarray,
    labels: Mapping[str, Sequence[Any]],
    attribute: str,
    to: str,
    alpha: float,
    early_stop: bool,
) -> dict[str, Any]:
    """Steer ``chosen`` (``CHUNK`` at a time with ``early_stop``) and read the images with the oracle."""
    from latentlens import shapes

    others = [k for k in shapes.ATTRIBUTES if k != attribute]
    success: list[bool] = []
    kept: dict[str, list[bool]] = {k: [] for k in others}
    step = CHUNK if early_stop else len(chosen)
    stopped = False
    for start in range(0, len(chosen), step):
        part = chosen[start : start + step]
        steered = run(part, True, alpha)
        read = shapes.read_batch((np.clip(steered, 0, 1) * 255).round().astype(np.uint8))
        success += [getattr(r, attribute) == to for r in read]
        for k in others:
            kept[k] += [getattr(r, k) == str(labels[k][i]) for r, i in zip(read, part)]
        done = len(success)
        if early_stop and done < len(chosen):
            bounds = [upper_bound(sum(success), done)] + [upper_bound(sum(v), done) for v in kept.values()]
            if min(bounds) < GOAL:
                stopped = True
                break
    rate = float(np.mean(success))
    kept_rate = {k: float(np.mean(v)) for k, v in kept.items()}
    return {
        "n": len(success),
        "stopped_early": stopped,
        "measure": "oracle",
        "success": rate,
        "kept": kept_rate,
        "score": rate * min(kept_rate.values()),
    }


def target_totals(reports: Sequence[Mapping[str, Any]], goal: float = GOAL) -> dict[str, dict[str, dict[str, Any]]]:
    """Oracle reports of from–to directions pooled per target value: ``{attribute: {to: totals}}``.

    Each sample is steered by the direction from its own value to ``to`` (what the dashboard's editor
    picks by the sample's label), so the totals are that edit's measured rates over every starting
    value: ``success`` and ``kept`` (hits over samples steered), ``n``, ``pairs`` (from–to directions
    pooled), ``weakest`` (the pair with the lowest score) and ``meets_goal``.

    Example: ``target_totals(summary["direction_effects"])["color"]["blue"]["success"]`` → 1.0.
    """
    pooled: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for report in reports:
        if report.get("from") is None or report.get("measure") != "oracle" or not report.get("n"):
            continue
        pooled.setdefault((str(report["attribute"]), str(report["to"])), []).append(report)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (attribute, to), rows in sorted(pooled.items()):
        n = sum(int(r["n"]) for r in rows)
        success = sum(float(r["success"]) * int(r["n"]) for r in rows) / n
        kept = {k: sum(float(r["kept"][k]) * int(r["n"]) for r in rows) / n for k in rows[0]["kept"]}
        weakest = min(rows, key=lambda r: float(r["score"]))
        totals = {
            "success": success,
            "kept": kept,
            "n": n,
            "pairs": len(rows),
            "weakest": {"from": weakest["from"], "score": float(weakest["score"]), "n": int(weakest["n"])},
        }
        totals["meets_goal"] = meets_goal(totals, goal)
        out.setdefault(attribute, {})[to] = totals
    return out


def rank_key(meta: dict[str, Any]) -> tuple[int, float]:
    """Sort key of a saved direction's JSON metadata: validated first, best ``score`` first."""
    validation = (meta.get("provenance") or {}).get("validation") or {}
    score = validation.get("score")
    return (0, -float(score)) if isinstance(score, (int, float)) else (1, 0.0)


__all__ = [
    "CHUNK",
    "GOAL",
    "canonical_mask",
    "edit_directions",
    "edit_name",
    "is_shapes_world",
    "meets_goal",
    "rank_key",
    "target_totals",
    "upper_bound",
    "validate_direction",
]
