"""Train a sparse autoencoder on one site of a recorded run and check its features against ground truth.

:func:`train_run_sae` streams token-level rows of the run's training samples through
:meth:`SparseAutoencoder.partial_fit` (a shuffle buffer of whole store chunks, so memory stays
bounded), measures it on held-out samples and, when the run has labels, aligns every attribute
value with its best single feature. It writes ``RUN_DIR/analysis/sae/<site>/``::

    sae.safetensors + sae.json     the SAE (weights; config, provenance, metrics)
    summary.json                   what `latentlens sae --json` prints
    features.npz                   sample [sample], sample_max [sample, feature], frequency [feature], top_samples [feature, rank],
                                   top_tokens [feature, rank, token] (per-token activation of the top samples);
                                   with labels also values [value] ("color=red"...), best_value [feature] (index
                                   into values) and best_f1 [feature] (held-out F1 of that value)

and the best-aligned features as directions ``RUN_DIR/analysis/directions/sae/<site>/fNNNN``.

Metrics (held-out samples, a grouped 20 % split by prompt):

- ``fvu``: ``Σ|x - x̂|² / Σ|x - mean|²`` over the held-out token rows.
- ``dead_fraction``: features that fire on no held-out row; ``l0``: mean active features per row.
- ``alignment["<attribute>=<value>"]``: the feature whose *sample score* (its largest activation
  over the sample's tokens and the chosen steps) best separates the samples with that value,
  with the F1-maximising threshold picked on the training samples and ``f1`` measured on the
  held-out ones; ``iou``: token-level IoU, over the held-out samples, of the tokens where that
  feature's activation reaches ``token_threshold`` (the IoU-maximising one of 48 quantiles of its
  positive activations on the training samples; TopK fills its k slots with small activations
  too, so "fires at all" would count noise) with the ground-truth tokens (the patches the object covers for shape / colour / size /
  position, the other patches for background, none on samples without the value).

Runs store no object masks; they are rendered from each sample's shapes-world labels (the scene
the prompt asks for, object at its position's centre), so IoU is available for image-stream
sites of shapes-world runs and ``None`` (with ``iou_note`` saying why) elsewhere.

Example::

    from latentlens.analysis.sae_run import train_run_sae
    summary = train_run_sae("runs/shapes", "blocks.3.resid_out.img", steps=[19], n_features=256, k=8)
    summary["fvu"], summary["alignment"]["color=red"]     # 0.08, {'feature': 17, 'f1': 0.97, ...}
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentlens.analysis.sae import SparseAutoencoder, iter_site_rows, site_steps
from latentlens.errors import ConfigError, StoreError, UnknownNameError

SAE_FOLDER = "sae"
DIRECTIONS_FOLDER = "sae"  # under analysis/directions/
TOP_SAMPLES = 8
F1_GOAL = 0.9


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def site_folder(run_dir: str | Path, site: str) -> Path:
    """``RUN_DIR/analysis/sae/<site>/``."""
    return Path(run_dir) / "analysis" / SAE_FOLDER / site


def run_labels(run: Any, samples: Sequence[int]) -> dict[str, np.ndarray]:
    """attribute -> ``[sample]`` label strings, for the labels every one of ``samples`` has (from the manifest)."""
    rows = run.manifest.get("labels") or []
    journal = run.samples
    picked = []
    for i in samples:
        row = rows[i] if i < len(rows) else None
        picked.append(row if isinstance(row, dict) else ((journal.get(i) or {}).get("labels") or {}))
    names = sorted({k for r in picked for k in r})
    return {
        n: np.asarray([str(r[n]) for r in picked])
        for n in names
        if all(r.get(n) is not None for r in picked) and len({str(r[n]) for r in picked}) >= 2
    }


# ------------------------------------------------------------------ masks
def ground_truth_masks(run: Any, site: str, labels: dict[str, np.ndarray]) -> tuple[np.ndarray | None, str | None]:
    """``(object [sample, token] bool, None)`` rendered from shapes-world labels, or ``(None, why not)``."""
    from latentlens import shapes

    if not site.endswith(".img"):
        return None, f"{site!r} is not an image-stream site, so its tokens are not image patches."
    missing = [a for a in shapes.ATTRIBUTES if a not in labels]
    if missing:
        return None, (
            f"the run's labels lack {', '.join(missing)}, so the object's pixels cannot be rendered "
            "(runs store no object masks)."
        )
    n = len(labels["shape"])
    bad = [a for a in shapes.ATTRIBUTES if not set(labels[a]) <= set(shapes.VALUES[a])]
    if bad:
        return None, f"the run's {bad[0]} labels are not shapes-world values, so no mask can be rendered."
    config = (run.manifest.get("model") or {}).get("transformer_config") or {}
    canvas, patch = int(config.get("sample_size") or 0), int(config.get("patch_size") or 0)
    tokens = int(run[site].shape[2]) if run[site].ndim == 4 else 1
    side = canvas // patch if canvas and patch else 0
    if side * side != tokens:
        return None, (
            f"{site!r} has {tokens} tokens, not the {side}x{side} patch grid of a {canvas}-pixel canvas, "
            "so tokens cannot be matched to pixels."
        )
    masks = np.zeros((n, tokens), dtype=bool)
    cache: dict[tuple[str, ...], np.ndarray] = {}
    for i in range(n):
        key = tuple(str(labels[a][i]) for a in shapes.ATTRIBUTES)
        if key not in cache:
            scene = shapes.render(shapes.Attributes(**dict(zip(shapes.ATTRIBUTES, key))), canvas=canvas)
            cover = scene.mask.reshape(side, patch, side, patch).mean(axis=(1, 3))  # [height, width]
            cache[key] = (cover >= 0.5).reshape(-1)  # row-major patch order
        masks[i] = cache[key]
    return masks, None


# --------------------------------------------------------------- F1 search
def best_thresholds(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every (feature, value): the threshold on ``scores`` maximising F1 and that F1.

    ``scores`` ``[sample, feature]`` sample scores, ``targets`` ``[sample, value]`` bool. A sample is predicted positive
    when its score is at least the threshold (always > 0: a feature that does not fire predicts nothing).
    Returns ``thresholds [feature, value]`` and ``f1 [feature, value]``.
    """
    n, n_feat = scores.shape
    order = np.argsort(-scores, axis=0, kind="stable")  # [sample, feature]
    sorted_scores = np.take_along_axis(scores, order, axis=0)  # [sample, feature] descending
    # a cut is valid only after the last of a run of tied scores, and only at scores > 0
    valid = np.ones((n, n_feat), dtype=bool)
    valid[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    valid &= sorted_scores > 0
    predicted = np.arange(1, n + 1, dtype=np.float64)[:, None]  # [sample, 1]
    thresholds = np.zeros((n_feat, targets.shape[1]), dtype=np.float64)
    best_f1 = np.zeros((n_feat, targets.shape[1]), dtype=np.float64)
    for v in range(targets.shape[1]):  # one value at a time: [sample, feature] temporaries only
        tp = np.cumsum(targets[:, v][order], axis=0, dtype=np.float64)  # [sample, feature]
        f1 = np.where(valid, 2.0 * tp / (predicted + float(targets[:, v].sum())), -1.0)
        best = f1.argmax(0)  # [feature]
        thresholds[:, v] = sorted_scores[best, np.arange(n_feat)]
        best_f1[:, v] = np.maximum(f1[best, np.arange(n_feat)], 0.0)
    return thresholds, best_f1


def _f1(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = float((predicted & truth).sum())
    p, t = float(predicted.sum()), float(truth.sum())
    precision = tp / p if p else 0.0
    recall = tp / t if t else 0.0
    return (2 * tp / (p + t) if p + t else 0.0), precision, recall


# ------------------------------------------------------------------- train
def _check_site(run: Any, site: str) -> None:
    from latentlens.analysis.run import feature_sites

    available = feature_sites(run)
    if site not in available:
        import difflib

        close = difflib.get_close_matches(site, available, n=3)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise UnknownNameError(
            f"The run {run.path} did not record site {site!r}.{hint} It recorded: {', '.join(available) or 'no activation sites'}."
        )


def train_run_sae(
    run_dir: str | Path,
    site: str,
    *,
    steps: Sequence[int] | None = None,
    n_features: int = 256,
    k: int = 8,
    epochs: int = 3,
    batch_size: int = 256,
    lr: float = 1e-3,
    aux_k: int | None = None,
    dead_after: int = 20_000,
    alignment: bool | None = None,
    test_size: float = 0.2,
    buffer_rows: int = 65_536,
    device: str = "cpu",
    seed: int = 0,
    write: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train a TopK SAE on ``site`` (token rows of ``steps``; default every recorded step), evaluate, align.

    ``alignment``: ``None`` aligns when the run has labels, ``True`` requires labels (a clear error
    without them), ``False`` skips it. Returns the summary document (see the module docstring).
    """
    from latentlens.analysis.probes import grouped_split
    from latentlens.analysis.run import open_analysable_run
    from latentlens.store import config_hash

    started = time.perf_counter()
    sae = SparseAutoencoder(
        n_features=n_features,
        k=k,
        aux_k=aux_k,
        dead_after=dead_after,
        epochs=1,
        batch_size=batch_size,
        lr=lr,
        device=device,
        random_state=seed,
    )
    sae.check_params()  # bad hyperparameters fail before anything is read
    if not 0.0 < float(test_size) < 1.0:
        raise ConfigError(f"test_size must be between 0 and 1, got {test_size!r}.")
    run = open_analysable_run(run_dir)
    _check_site(run, site)
    chosen = site_steps(run, site, steps)
    step_list = [s for _, s in chosen]
    samples = sorted(run.completed)
    if len(samples) < 5:
        raise StoreError(f"The run {run_dir} has {len(samples)} finished samples; an SAE needs at least 5.")
    labels = run_labels(run, samples) if alignment is not False else {}
    if alignment is True and not labels:
        raise ConfigError(
            f"The run {run_dir} has no labels (with at least two values) on its samples, so features cannot be "
            "aligned with ground truth; record it from a probe spec (latentlens record --probe ...) or "
            "drop --alignment."
        )
    prompts = run.manifest.get("prompts") or []
    test = grouped_split(len(samples), test_size, [prompts[i] if i < len(prompts) else i for i in samples], seed)
    ids = np.asarray(samples)
    train_ids, test_ids = ids[~test], ids[test]

    # ---- train: whole chunks into a shuffle buffer, one partial_fit per full buffer
    t0 = time.perf_counter()
    rows_trained = 0
    for epoch in range(int(epochs)):
        buffer: list[np.ndarray] = []
        held = 0
        for rows, _, _ in iter_site_rows(
            run, site, steps=step_list, samples=train_ids, shuffle_blocks=True, seed=seed * 1000 + epoch
        ):
            buffer.append(rows)
            held += len(rows)
            if held >= buffer_rows:
                sae.partial_fit(np.concatenate(buffer))
                rows_trained += held
                buffer, held = [], 0
        if buffer:
            sae.partial_fit(np.concatenate(buffer))
            rows_trained += held
        _log(f"sae: epoch {epoch + 1}/{epochs}: loss {np.mean(sae.loss_curve_[-50:]):.4f}", quiet)
    train_seconds = time.perf_counter() - t0

    # ---- evaluate on held-out rows; sample scores of every sample for the alignment
    t0 = time.perf_counter()
    sse = total_sq = 0.0
    channel_sum = np.zeros(sae.n_features_in_, dtype=np.float64)
    n_rows = l0_sum = 0
    fired = np.zeros(n_features, dtype=bool)
    position = {int(s): j for j, s in enumerate(samples)}
    sample_max = np.zeros((len(samples), n_features), dtype=np.float32)  # [sample, feature]
    is_test = np.zeros(len(samples), dtype=bool)
    is_test[[position[int(s)] for s in test_ids]] = True
    for rows, block_ids, _ in iter_site_rows(run, site, steps=step_list, samples=samples):
        z = sae.transform(rows)  # [sample*token, feature]
        per = z.reshape(len(block_ids), -1, n_features).max(axis=1)  # [sample, feature]
        where = np.asarray([position[int(s)] for s in block_ids])
        sample_max[where] = np.maximum(sample_max[where], per)
        held_out = np.repeat(is_test[where], len(rows) // len(block_ids))
        if held_out.any():
            x = rows[held_out].astype(np.float64)
            zt = z[held_out]
            sse += float(((x - sae.inverse_transform(zt)) ** 2).sum())
            total_sq += float((x**2).sum())
            channel_sum += x.sum(0)
            n_rows += len(x)
            l0_sum += int((zt > 0).sum())
            fired |= (zt > 0).any(0)
    denominator = total_sq - float((channel_sum**2).sum()) / max(n_rows, 1)
    summary: dict[str, Any] = {
        "run": str(run_dir),
        "site": site,
        "steps": step_list,
        "n_features": int(n_features),
        "k": int(k),
        "epochs": int(epochs),
        "samples": {"train": len(train_ids), "held_out": len(test_ids)},
        "rows": {"trained": int(rows_trained), "held_out": int(n_rows)},
        "fvu": sse / denominator if denominator > 0 else math.nan,
        "dead_fraction": float(1.0 - fired.mean()),
        "dead_fraction_training": sae.dead_fraction(),
        "l0": l0_sum / max(n_rows, 1),
        "alignment": {},
        "alignment_summary": None,
        "iou_note": None,
    }

    # ---- alignment with ground truth
    best_features: dict[str, dict[str, Any]] = {}
    per_feature: dict[str, np.ndarray] = {}  # every feature's best-aligned value (for the dashboard)
    if labels:
        values = [(a, v) for a in sorted(labels) for v in sorted(set(labels[a]))]
        targets = np.stack([labels[a] == v for a, v in values], axis=1)  # [sample, value]
        thresholds, train_f1 = best_thresholds(sample_max[~is_test], targets[~is_test])  # [feature, value]
        masks, note = ground_truth_masks(run, site, labels)
        summary["iou_note"] = note
        for j, (attribute, value) in enumerate(values):
            f = int(np.argmax(train_f1[:, j]))
            threshold = float(thresholds[f, j])
            f1, precision, recall = _f1(sample_max[is_test, f] >= max(threshold, 1e-30), targets[is_test, j])
            best_features[f"{attribute}={value}"] = {
                "feature": f,
                "f1": f1,
                "precision": precision,
                "recall": recall,
                "threshold": threshold,
                "train_f1": float(train_f1[f, j]),
                "iou": None,
                "attribute": attribute,
                "value": value,
            }
        if masks is not None:
            _token_iou(run, site, step_list, samples, sae, best_features, labels, masks, position, is_test)
        best_value = train_f1.argmax(axis=1)  # [feature]
        held_f1 = np.asarray(
            [
                _f1(sample_max[is_test, f] >= max(float(thresholds[f, j]), 1e-30), targets[is_test, j])[0]
                for f, j in enumerate(best_value)
            ]
        )
        per_feature = {
            "values": np.asarray([f"{a}={v}" for a, v in values]),
            "best_value": best_value.astype(np.int64),
            "best_f1": held_f1.astype(np.float32),
        }
        hits = sum(1 for r in best_features.values() if r["f1"] >= F1_GOAL)
        summary["alignment_summary"] = {
            "values": len(values),
            f"f1_at_least_{F1_GOAL}": hits,
            "fraction": hits / len(values) if values else math.nan,
        }
    elif alignment is None:
        summary["iou_note"] = "the run has no labels, so no alignment was computed."
    summary["alignment"] = best_features
    eval_seconds = time.perf_counter() - t0

    provenance = {
        "run": str(Path(run_dir).resolve()),
        "site": site,
        "steps": step_list,
        "run_config_hash": run.manifest.get("config_hash") or config_hash(run.manifest),
        "train_samples": len(train_ids),
        "rows_trained": int(rows_trained),
        "seed": int(seed),
    }
    summary["config_hash"] = sae.config_hash()
    summary["seconds"] = {
        "train": round(train_seconds, 3),
        "evaluate": round(eval_seconds, 3),
        "total": round(time.perf_counter() - started, 3),
    }
    if write:
        summary["paths"] = _write(
            Path(run_dir),
            site,
            sae,
            summary,
            provenance,
            samples,
            sample_max,
            position,
            run,
            step_list,
            best_features,
            per_feature,
        )
    return summary


def _token_activations(
    run: Any,
    site: str,
    steps: Sequence[int],
    samples: Sequence[int],
    sae: SparseAutoencoder,
    features: Sequence[int],
    position: dict[int, int],
) -> np.ndarray:
    """``[sample, token, feature]`` (the given ``features``): each feature's activation per token, max over ``steps``."""
    tokens = int(run[site].shape[2]) if run[site].ndim == 4 else 1
    out = np.zeros((len(samples), tokens, len(features)), dtype=np.float32)
    cols = np.asarray(features, dtype=np.int64)
    for rows, block_ids, _ in iter_site_rows(run, site, steps=steps, samples=samples):
        z = sae.transform(rows)[:, cols].reshape(len(block_ids), tokens, len(cols))
        where = np.asarray([position[int(s)] for s in block_ids])
        out[where] = np.maximum(out[where], z)
    return out


def _iou(active: np.ndarray, truth: np.ndarray) -> float:
    union = float((active | truth).sum())
    return float((active & truth).sum()) / union if union else 0.0


def _token_iou(
    run: Any,
    site: str,
    steps: Sequence[int],
    samples: Sequence[int],
    sae: SparseAutoencoder,
    best: dict[str, dict[str, Any]],
    labels: dict[str, np.ndarray],
    masks: np.ndarray,
    position: dict[int, int],
    is_test: np.ndarray,
    candidates: int = 48,
) -> None:
    """Fill ``iou`` (held-out samples) and ``token_threshold`` (chosen on the training samples) of every record."""
    features = sorted({r["feature"] for r in best.values()})
    acts = _token_activations(run, site, steps, samples, sae, features, position)  # [sample, token, feature]
    for record in best.values():
        a = acts[:, :, features.index(record["feature"])]  # [sample, token]
        has_value = (labels[record["attribute"]] == record["value"])[:, None]  # [sample, 1]
        truth = (masks if record["attribute"] != "background" else ~masks) & has_value
        positive = a[~is_test][a[~is_test] > 0]
        if positive.size == 0:
            record["iou"], record["token_threshold"] = 0.0, None
            continue
        grid = np.unique(np.quantile(positive, np.linspace(0.0, 0.98, candidates)))
        scores = [_iou(a[~is_test] >= t, truth[~is_test]) for t in grid]
        threshold = float(grid[int(np.argmax(scores))])
        record["token_threshold"] = threshold
        record["iou"] = _iou(a[is_test] >= threshold, truth[is_test])


# ------------------------------------------------------------------- write
def _write(
    run_dir: Path,
    site: str,
    sae: SparseAutoencoder,
    summary: dict[str, Any],
    provenance: dict[str, Any],
    samples: Sequence[int],
    sample_max: np.ndarray,
    position: dict[int, int],
    run: Any,
    steps: Sequence[int],
    best: dict[str, dict[str, Any]],
    per_feature: dict[str, np.ndarray],
) -> dict[str, Any]:
    folder = site_folder(run_dir, site)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {key: summary[key] for key in ("fvu", "dead_fraction", "l0", "alignment_summary")}
    sae.save(folder / "sae", provenance=provenance, metrics=metrics)
    # top-activating samples per feature, with their per-token activations (what /features draws)
    top = np.argsort(-sample_max, axis=0, kind="stable")[:TOP_SAMPLES].T  # [feature, rank] positions
    top_ids = np.asarray(samples, dtype=np.int64)[top]  # [feature, rank] sample ids
    tokens = np.zeros((sae.n_features, top.shape[1], int(run[site].shape[2]) if run[site].ndim == 4 else 1), np.float16)
    needed = sorted({int(s) for s in top_ids.reshape(-1)})
    sub_position = {s: j for j, s in enumerate(needed)}
    acts = _token_activations(
        run, site, steps, needed, sae, list(range(sae.n_features)), sub_position
    )  # [sample, token, feature]
    for f in range(sae.n_features):
        for t, s in enumerate(top_ids[f]):
            tokens[f, t] = acts[sub_position[int(s)], :, f]
    np.savez(
        folder / "features.npz",
        sample=np.asarray(samples, dtype=np.int64),
        sample_max=sample_max.astype(np.float16),
        frequency=sae.frequency_.astype(np.float32),
        top_samples=top_ids,
        top_tokens=tokens,
        allow_pickle=True,  # numpy's default; named, so **per_feature (array names) cannot be read as it
        **per_feature,
    )
    # the best-aligned features as directions (the editor and /directions read analysis/directions/)
    directions = run_dir / "analysis" / "directions" / DIRECTIONS_FOLDER / site
    if directions.is_dir():  # drop only the feature directions an earlier `latentlens sae` wrote here
        for meta in directions.glob("f*.json"):
            try:
                written = json.loads(meta.read_text()).get("provenance", {}).get("method") == "sae_feature"
            except (OSError, ValueError):
                written = False
            if written and meta.with_suffix(".safetensors").is_file():
                meta.with_suffix(".safetensors").unlink()
                meta.unlink()
    by_feature: dict[int, list[dict[str, Any]]] = {}
    for record in best.values():
        by_feature.setdefault(record["feature"], []).append(record)
    names = []
    for f, records in sorted(by_feature.items()):
        lead = max(records, key=lambda r: r["f1"])
        direction = sae.feature_direction(
            f,
            site=site,
            steps=list(steps),
            attribute=lead["attribute"],
            to=lead["value"],
            f1=lead["f1"],
            aligned=[f"{r['attribute']}={r['value']}" for r in records],
        )
        direction.save(directions / f"f{f:04d}")
        names.append(f"{DIRECTIONS_FOLDER}/{site}/f{f:04d}")
    summary_path = folder / "summary.json"
    paths = {
        "folder": str(folder),
        "sae": str(folder / "sae.safetensors"),
        "summary": str(summary_path),
        "directions": names,
    }
    summary_path.write_text(json.dumps({**summary, "paths": paths}, indent=2, default=str, allow_nan=True) + "\n")
    return paths


# -------------------------------------------------------------------- read
def sae_sites(run_dir: str | Path) -> list[str]:
    """Sites of ``run_dir`` with a trained SAE (``analysis/sae/<site>/summary.json``)."""
    folder = Path(run_dir) / "analysis" / SAE_FOLDER
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "summary.json").is_file() and (p / "features.npz").is_file())


def load_sae_result(run_dir: str | Path, site: str) -> dict[str, Any]:
    """``{"summary": dict, "arrays": {name: ndarray}}`` of the SAE trained at ``site`` (no pickle)."""
    folder = site_folder(run_dir, site)
    if site not in sae_sites(run_dir):
        trained = sae_sites(run_dir)
        raise UnknownNameError(
            f"The run {run_dir} has no SAE at site {site!r}; trained sites: {', '.join(trained) or 'none'} "
            f"(train one with `latentlens sae {run_dir} --site SITE`)."
        )
    try:
        summary = json.loads((folder / "summary.json").read_text())
        with np.load(folder / "features.npz", allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError) as error:
        raise StoreError(f"The SAE results in {folder} cannot be read ({error}); rerun `latentlens sae`.") from error
    return {"summary": summary, "arrays": arrays}


__all__ = [
    "best_thresholds",
    "ground_truth_masks",
    "load_sae_result",
    "run_labels",
    "sae_sites",
    "site_folder",
    "train_run_sae",
]
