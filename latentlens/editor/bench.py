"""The shapes-world edit benchmark: EMS, its ablations and the baselines in one harness.

Protocol (``run_benchmark``):

1. **Cases**: ``n`` edits with fixed seeds; the edited attribute cycles through all five
   attributes (``shape, color, size, position, background``), so every attribute gets n/5 edits.
   Source attributes are drawn from all 720 combinations (``numpy`` seed ``seed``); source ``i``
   is generated from its canonical caption with noise seed ``seed * 100003 + i``.
2. **Extract**: the source image is described by the shapes-world captioner (oracle → canonical
   caption); the target is that caption with the case's attribute set to a different value
   (drawn with the same rng). So every method edits what is really in the image.
3. **Edit** with each method (batched), decode, and judge with the oracle:
   - *success*: the oracle reads the target value of the edited attribute;
   - *preserved*: the oracle reads every other attribute as in the source (mean over edits of
     the fraction of the 4 other attributes kept; ``all_kept`` is the fraction with all 4 kept);
   - *PSNR outside*: PSNR (dB, 8-bit pixels) between source and edit over the pixels outside
     the old ∪ new object masks (``object_mask`` of the source and of the edit, each dilated by one
     pixel for the anti-aliased rim), for non-background edits; infinite PSNR (no change) is
     reported as 100 dB;
   - *seconds per edit*: wall time of the method's batched call divided by the batch size.
   The headline score is ``success × preserved``.
4. **SDE per attribute** (docs/design.md, "Disentanglement metric", with :func:`latentlens.analysis.metrics.sde`; ``sde=True``):
   each method also *reconstructs* the source under its own description ``p_x`` (the method run
   with target = source, same seeds and noise: EMS both and FlowEdit return the source exactly,
   prompt swap regenerates it from its noise, SDEdit / text-only / image-only re-sample it), and
   the edit is the reconstruction under ``p_flip``. ``D`` = per-pixel squared difference of the two
   (pixels in [0, 1], summed over RGB); ``M`` = the object masks of both (each dilated by one
   pixel), or their complement for background edits. Per attribute, pooled over its edits:
   effectiveness = mean D in M, leakage = mean D outside M, SDE = eff / (eff + leak), reported
   beside the oracle's success. Reconstructions are not timed.

Example::

    result = run_benchmark(latentlens.load_pipeline("toy"), n=50)
    print(result.table())
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import torch

from latentlens.editor.baselines import flowedit, prompt_swap, sdedit
from latentlens.editor.editor import EMSEditor
from latentlens.editor.images import to_uint8
from latentlens.editor.manipulate import encode_pair
from latentlens.editor.model import EditModel
from latentlens.errors import ConfigError
from latentlens.metrics import psnr, sde

METHODS = ("ems", "ems_text", "ems_image", "prompt_swap", "sdedit", "flowedit")
METHOD_LABELS = {
    "ems": "EMS (both spaces)",
    "ems_text": "EMS text only",
    "ems_image": "EMS image only",
    "prompt_swap": "prompt swap",
    "sdedit": "SDEdit",
    "flowedit": "FlowEdit",
}
#: baseline settings used by the benchmark: SDEdit at strength 0.6; FlowEdit as in Kulikov et al. 2024
#: (n_avg = 1, n_min = 0, one CFG scale for both branches) with σ_max = 0.8 (n_max = 15 of the 20 steps)
BASELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sdedit": {"strength": 0.6},
    "flowedit": {"sigma_max": 0.8, "n_avg": 1, "n_min": 0},
}
#: seed of the benchmark's cases; EMS defaults are tuned only on the dev set (seed DEV_SEED)
BENCH_SEED = 0
DEV_SEED = 2


@dataclass
class EditCase:
    index: int
    seed: int
    attributes: Any  # the prompt's Attributes
    attribute: str  # the attribute to edit
    pick: float  # uniform draw choosing the new value among the other values


def make_cases(n: int, seed: int = 0, only_attribute: str | None = None) -> list[EditCase]:
    """``n`` cases with the edited attribute cycling through all five attributes (or only ``only_attribute``)."""
    from latentlens.shapes import ATTRIBUTES, all_combinations

    if n < 1:
        raise ConfigError(f"The benchmark needs at least one edit, got n={n}.")
    if only_attribute is not None and only_attribute not in ATTRIBUTES:
        raise ConfigError(f"Unknown attribute {only_attribute!r}; valid: {', '.join(ATTRIBUTES)}.")
    rng = np.random.default_rng(seed)
    combos = all_combinations()
    cases = []
    for i in range(n):
        attrs = combos[int(rng.integers(len(combos)))]
        attribute = only_attribute or ATTRIBUTES[i % len(ATTRIBUTES)]
        cases.append(EditCase(i, seed * 100003 + i, attrs, attribute, float(rng.random())))
    return cases


def _new_value(read: Any, case: EditCase) -> str:
    from latentlens.shapes import VALUES

    current = getattr(read, case.attribute)
    others = [v for v in VALUES[case.attribute] if v != current]
    return others[min(int(case.pick * len(others)), len(others) - 1)]


def dilate_mask(mask: np.ndarray) -> np.ndarray:
    """``mask`` (bool [height, width]) grown by one pixel in the four directions (the anti-aliased rim of an object)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def baseline_settings(baseline_kwargs: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """:data:`BASELINE_DEFAULTS` updated with ``baseline_kwargs`` (``{method: {setting: value}}``)."""
    settings = {k: dict(v) for k, v in BASELINE_DEFAULTS.items()}
    for k, v in (baseline_kwargs or {}).items():
        settings.setdefault(k, {}).update(v)
    return settings


def shapes_world_model(editor: EMSEditor) -> EditModel:
    """The editor's model, refused unless it is a toy model trained on the shapes world (the oracle judges it)."""
    if not editor.model.shapes_world:
        raise ConfigError(
            "The shapes-world edit benchmark needs a toy model trained on the shapes world "
            "(--model toy, toy-pixart or toy-unet)."
        )
    return editor.model


def check_methods(methods: Sequence[str]) -> None:
    """Refuse method names outside :data:`METHODS` with a message that lists the valid ones."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"Unknown benchmark method(s) {unknown}; choose from {', '.join(METHODS)}.")


@dataclass
class EditBatch:
    """One batch of sources, edited by any benchmark method toward any target (shared by both benchmarks)."""

    editor: EMSEditor
    z_src: torch.Tensor  # [batch, channel, height, width], the generated sources
    noise: torch.Tensor  # [batch, channel, height, width], the noise they were generated from
    sources: list[str]  # the sources' descriptions (Extract)
    e_src: Any  # encode_pair's source embedding
    seeds: list[int]  # one per source
    baseline: dict[str, dict[str, Any]]  # baseline_settings(...)

    def run(self, method: str, targets: list[str], e_tgt: Any) -> torch.Tensor:
        """The latents of ``method``'s edit of every source toward ``targets`` (embedded as ``e_tgt``)."""
        model = self.editor.model
        if method in ("ems", "ems_text", "ems_image"):
            mode = {"ems": "both", "ems_text": "text", "ems_image": "image"}[method]
            return self.editor.edit_latents(self.z_src, self.sources, targets, mode=mode)
        if method == "prompt_swap":
            return prompt_swap(model, self.noise, e_tgt)
        if method == "sdedit":
            return sdedit(model, self.z_src, e_tgt, seed=[s + 7 for s in self.seeds], **self.baseline["sdedit"])
        return flowedit(model, self.z_src, self.e_src, e_tgt, seed=self.seeds[0], **self.baseline["flowedit"])


@dataclass
class BenchResult:
    """Per-method, per-attribute results; :meth:`table` renders the Markdown table."""

    n: int
    methods: list[str]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> summary
    per_attribute: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    sources_matching_prompt: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    edits: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "methods": self.methods,
            "summary": self.rows,
            "per_attribute": self.per_attribute,
            "sources_matching_prompt": self.sources_matching_prompt,
            "settings": self.settings,
        }

    def table(self) -> str:
        lines = [
            "| method | success | others kept | all 4 kept | success × kept | PSNR outside (dB, non-bg) | s / edit |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in self.methods:
            r = self.rows[m]
            lines.append(
                f"| {METHOD_LABELS.get(m, m)} | {r['success']:.1%} | {r['preserved']:.1%} | {r['all_kept']:.1%} | "
                f"{r['score']:.3f} | {r['psnr_outside']:.1f} | {r['seconds_per_edit']:.3f} |"
            )
        attrs = list(next(iter(self.per_attribute.values())).keys()) if self.per_attribute else []
        lines += [
            "",
            "Per attribute — success / others kept / SDE (effectiveness, leakage):",
            "",
            "| method | " + " | ".join(attrs) + " |",
            "|---|" + "---|" * len(attrs),
        ]
        for m in self.methods:
            cells = []
            for a in attrs:
                c = self.per_attribute[m][a]
                cell = f"{c['success']:.0%} / {c['preserved']:.0%}"
                if "sde" in c:
                    cell += f" / {c['sde']:.2f} ({c['effectiveness']:.4f}, {c['leakage']:.4f})"
                cells.append(cell)
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def run_benchmark(
    pipe: Any,
    n: int = 200,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    batch_size: int = 25,
    editor_kwargs: dict[str, Any] | None = None,
    baseline_kwargs: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
    keep_images: bool = False,
    only_attribute: str | None = None,
    sde: bool = True,
) -> BenchResult:
    """Run the benchmark (module docstring) and return a :class:`BenchResult`."""
    from latentlens.shapes import ATTRIBUTES, canonical_caption, object_mask, read_batch

    check_methods(methods)
    editor = EMSEditor(pipe, **(editor_kwargs or {}))
    model = shapes_world_model(editor)
    settings_b = baseline_settings(baseline_kwargs)
    cases = make_cases(n, seed, only_attribute)
    say = progress or (lambda msg: None)

    records: list[dict[str, Any]] = []
    sde_parts: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]] = {m: {} for m in methods}
    times: dict[str, float] = {m: 0.0 for m in methods}
    matching = 0
    for start in range(0, n, batch_size):
        chunk = cases[start : start + batch_size]
        b = len(chunk)
        prompts = [canonical_caption(c.attributes) for c in chunk]
        noise = model.noise(b, [c.seed for c in chunk])
        z_src = model.generate(model.encode(prompts), noise=noise)
        src_img = to_uint8(model.decode(z_src))  # [batch, height, width, 3]
        read = read_batch(src_img)
        matching += sum(r == c.attributes for r, c in zip(read, chunk))
        sources = [canonical_caption(r) for r in read]  # Extract: the shapes captioner
        new_values = [_new_value(r, c) for r, c in zip(read, chunk)]
        targets = [canonical_caption(r.replace(**{c.attribute: v})) for r, c, v in zip(read, chunk, new_values)]
        e_s, e_t = encode_pair(model, sources, targets)
        outputs: dict[str, np.ndarray] = {}
        recons: dict[str, np.ndarray] = {}
        batch = EditBatch(editor, z_src, noise, sources, e_s, [c.seed for c in chunk], settings_b)
        for m in methods:
            t0 = time.perf_counter()
            z = batch.run(m, targets, e_t)
            outputs[m] = to_uint8(model.decode(z))
            times[m] += time.perf_counter() - t0
            if sde:  # the same method under the source description p_x: the reconstruction of in docs/design.md
                recons[m] = to_uint8(model.decode(batch.run(m, sources, e_s)))
        for m in methods:
            judged = read_batch(outputs[m])
            for i, c in enumerate(chunk):
                src, out = src_img[i], outputs[m][i]
                others = [a for a in ATTRIBUTES if a != c.attribute]
                kept = [getattr(judged[i], a) == getattr(read[i], a) for a in others]
                region = dilate_mask(object_mask(src)) | dilate_mask(object_mask(out))
                p = psnr(src, out, ~region) if c.attribute != "background" else float("nan")
                rec = {
                    "method": m,
                    "case": c.index,
                    "attribute": c.attribute,
                    "source": sources[i],
                    "target": targets[i],
                    "read": judged[i].as_dict(),
                    "success": getattr(judged[i], c.attribute) == new_values[i],
                    "preserved": float(np.mean(kept)),
                    "all_kept": all(kept),
                    "psnr_outside": p,
                }
                if keep_images:
                    rec["source_image"], rec["image"] = src, out
                if sde:
                    rec_img = recons[m][i]
                    sde_region = dilate_mask(object_mask(rec_img)) | dilate_mask(object_mask(out))
                    region_m = ~sde_region if c.attribute == "background" else sde_region
                    sde_parts[m].setdefault(c.attribute, []).append((rec_img, out, region_m))
                    rec.update(sde_sums(rec_img, out, region_m))
                records.append(rec)
        say(f"edit-bench: {min(start + b, n)}/{n} edits done")

    result = BenchResult(
        n=n,
        methods=list(methods),
        sources_matching_prompt=matching / n,
        settings={
            "editor": {
                "mode_defaults": editor.mode,
                "alpha": editor.alpha,
                "inversion_sigma": editor.inversion_sigma,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(editor.params).items()},
            },
            "baselines": settings_b,
            "guidance_scale": model.guidance_scale,
            "num_inference_steps": model.num_inference_steps,
            "seed": seed,
        },
        edits=records,
    )
    for m in methods:
        rs = [r for r in records if r["method"] == m]
        success = float(np.mean([r["success"] for r in rs]))
        preserved = float(np.mean([r["preserved"] for r in rs]))
        psnrs = [r["psnr_outside"] for r in rs if not math.isnan(r["psnr_outside"])]
        result.rows[m] = {
            "success": success,
            "preserved": preserved,
            "all_kept": float(np.mean([r["all_kept"] for r in rs])),
            "score": success * preserved,
            "psnr_outside": float(np.mean(psnrs)) if psnrs else float("nan"),
            "psnr_outside_median": float(np.median(psnrs)) if psnrs else float("nan"),
            "seconds_per_edit": times[m] / n,
        }
        result.per_attribute[m] = {}
        for a in ATTRIBUTES:
            ra = [r for r in rs if r["attribute"] == a]
            if not ra:
                continue
            cell = {
                "n": len(ra),
                "success": float(np.mean([r["success"] for r in ra])),
                "preserved": float(np.mean([r["preserved"] for r in ra])),
            }
            if sde and sde_parts[m].get(a):
                cell.update(attribute_sde(sde_parts[m][a]))
            result.per_attribute[m][a] = cell
    return result


def sde_sums(reconstruction: np.ndarray, flipped: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """One edit's share of the pooled SDE: ``D`` summed inside / outside ``region`` and the pixel counts.

    Pooling edits = summing these (``effectiveness = Σ inside / Σ inside pixels``, likewise leakage), so
    a study can resample edits for an interval. ``reconstruction``, ``flipped``: uint8 ``[height, width, 3]``;
    ``region``: bool ``[height, width]``.
    """
    d = ((reconstruction.astype(np.float64) - flipped.astype(np.float64)) / 255.0) ** 2  # [height, width, 3]
    d = d.sum(axis=-1)  # [height, width]
    return {
        "sde_inside_sum": float(d[region].sum()),
        "sde_inside_pixels": int(region.sum()),
        "sde_outside_sum": float(d[~region].sum()),
        "sde_outside_pixels": int((~region).sum()),
    }


def attribute_sde(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """SDE (``docs/design.md``) pooled over edits: ``parts`` = ``[(reconstruction uint8 [height, width, 3], flipped, M bool [height, width])]``.

    Returns ``sde``, ``effectiveness`` and ``leakage`` from :func:`latentlens.analysis.metrics.sde` (pixels in [0, 1]).
    """
    x = np.stack([p[0] for p in parts]).astype(np.float64) / 255.0  # [batch, height, width, 3]
    flip = np.stack([p[1] for p in parts]).astype(np.float64) / 255.0
    region = np.stack([p[2] for p in parts])  # [batch, height, width]
    out = sde(x, flip, region, channels_last=True)
    return {"sde": out["sde"], "effectiveness": out["effectiveness"], "leakage": out["leakage"]}


__all__ = [
    "BASELINE_DEFAULTS",
    "BENCH_SEED",
    "BenchResult",
    "DEV_SEED",
    "METHODS",
    "attribute_sde",
    "make_cases",
    "psnr",
    "run_benchmark",
    "sde_sums",
]
