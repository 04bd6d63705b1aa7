"""The two-object edit benchmark: change one attribute of one object, keep the other object.

Protocol (``run_two_object_benchmark``), the fine-grained case of :mod:`latentlens.editor.bench`:

1. **Cases**: ``n`` edits with fixed seeds over all two-object scenes (``numpy`` seed ``seed``); the
   edited attribute cycles through the object attributes (shape, colour, size) and the edited
   object alternates (first, second), so every attribute gets n/3 edits, half on each object.
   Source ``i`` is generated from its canonical two-object caption with noise seed
   ``seed * 100003 + i``.
2. **Extract**: the source image is read by the two-object oracle and described by its canonical
   caption (the prompt's own caption where the reading is not a valid scene, e.g. both objects
   read in one colour; ``sources_matching_prompt`` says how often the reading matched the prompt).
   The target changes the case's attribute of the case's object to another value (a new colour
   also differs from the other object's).
3. **Edit** with each method (the same :class:`~latentlens.editor.bench.EditBatch` as the one-object
   benchmark) and judge with the oracle:
   - *success*: the edited object reads the new value;
   - *object kept*: the edited object's other attributes (shape/colour/size, position, background) read as before;
   - *other kept*: the other object reads exactly as before (all five attributes);
   - *other PSNR*: PSNR (dB, 8-bit) between source and edit inside the other object's mask (read on the
     source, dilated by one pixel); 100 dB when unchanged;
   - *leakage*: mean squared pixel change (pixels in [0, 1], summed over RGB) outside the edited
     object's old ∪ new masks (each dilated by one pixel), and the same region as *PSNR outside*.
   The headline score is ``success × other kept``.

Example::

    result = run_two_object_benchmark(latentlens.load_pipeline("toy"), n=30, methods=["ems", "flowedit"])
    print(result.table())
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from latentlens.editor.bench import (
    METHOD_LABELS,
    METHODS,
    BenchResult,
    EditBatch,
    baseline_settings,
    check_methods,
    dilate_mask,
    shapes_world_model,
)
from latentlens.editor.editor import EMSEditor
from latentlens.editor.images import to_uint8
from latentlens.editor.manipulate import encode_pair
from latentlens.errors import ConfigError
from latentlens.metrics import psnr

#: the attributes one object can change in a two-object scene (position and background belong to the scene)
EDITED_ATTRIBUTES = ("shape", "color", "size")


@dataclass
class TwoObjectCase:
    index: int
    seed: int
    scene: Any  # the prompt's TwoObjectAttributes
    attribute: str  # the attribute to edit
    target_object: int  # 0 = first (left / top), 1 = second
    pick: float  # uniform draw choosing the new value among the allowed values


def make_two_object_cases(n: int, seed: int = 0) -> list[TwoObjectCase]:
    """``n`` cases: attribute cycling through shape, colour, size; object alternating first/second per attribute."""
    from latentlens.shapes import all_two_object_combinations

    if n < 1:
        raise ConfigError(f"The benchmark needs at least one edit, got n={n}.")
    rng = np.random.default_rng(seed)
    scenes = all_two_object_combinations()
    cases = []
    for i in range(n):
        scene = scenes[int(rng.integers(len(scenes)))]
        attribute = EDITED_ATTRIBUTES[i % len(EDITED_ATTRIBUTES)]
        target_object = (i // len(EDITED_ATTRIBUTES)) % 2
        cases.append(TwoObjectCase(i, seed * 100003 + i, scene, attribute, target_object, float(rng.random())))
    return cases


def _described_scene(reading: Any, asked: Any) -> Any:
    """The scene the oracle read, or ``asked`` where the reading is not a valid two-object scene."""
    from latentlens.shapes import TwoObjectAttributes

    try:
        return TwoObjectAttributes(*reading.objects)
    except ConfigError:
        return asked


def target_scene(scene: Any, case: TwoObjectCase) -> tuple[Any, str]:
    """``scene`` with the case's attribute of the case's object changed, and the new value."""
    from latentlens.shapes import VALUES

    edited, other = scene.objects[case.target_object], scene.objects[1 - case.target_object]
    options = [
        v
        for v in VALUES[case.attribute]
        if v != getattr(edited, case.attribute) and not (case.attribute == "color" and v == other.color)
    ]
    value = options[min(int(case.pick * len(options)), len(options) - 1)]
    return scene.replace_object(case.target_object, **{case.attribute: value}), value


@dataclass
class TwoObjectBenchResult(BenchResult):
    """:class:`~latentlens.editor.bench.BenchResult` of the two-object protocol; :meth:`table` renders its columns."""

    def table(self) -> str:
        lines = [
            "| method | success | edited object's rest kept | other object kept | success × other kept "
            "| other object PSNR (dB) | leakage (MSE outside) | PSNR outside (dB) | s / edit |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in self.methods:
            r = self.rows[m]
            lines.append(
                f"| {METHOD_LABELS.get(m, m)} | {r['success']:.1%} | {r['object_kept']:.1%} | {r['other_kept']:.1%} "
                f"| {r['score']:.3f} | {r['other_psnr']:.1f} | {r['leakage']:.5f} | {r['psnr_outside']:.1f} "
                f"| {r['seconds_per_edit']:.3f} |"
            )
        lines += ["", "Per attribute — success / other object kept:", ""]
        lines += ["| method | " + " | ".join(EDITED_ATTRIBUTES) + " |", "|---|" + "---|" * len(EDITED_ATTRIBUTES)]
        for m in self.methods:
            cells = [
                f"{self.per_attribute[m][a]['success']:.0%} / {self.per_attribute[m][a]['other_kept']:.0%}"
                if a in self.per_attribute[m]
                else "–"
                for a in EDITED_ATTRIBUTES
            ]
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def judge_two_object_edit(
    case: TwoObjectCase,
    source_image: np.ndarray,
    source_read: Any,
    edited_image: np.ndarray,
    edited_read: Any,
    new_value: str,
) -> dict[str, Any]:
    """The oracle's and the masks' verdict on one edit (module docstring, step 3)."""
    k = case.target_object
    before, after = source_read.objects[k], edited_read.objects[k]
    rest = [a for a in ("shape", "color", "size", "position", "background") if a != case.attribute]
    edited_region = dilate_mask(source_read.masks[k]) | dilate_mask(edited_read.masks[k])  # [height, width]
    other_region = dilate_mask(source_read.masks[1 - k])  # [height, width]
    diff = ((edited_image.astype(np.float64) - source_image.astype(np.float64)) / 255.0) ** 2  # [height, width, 3]
    outside = ~edited_region
    return {
        "success": getattr(after, case.attribute) == new_value,
        "object_kept": all(getattr(after, a) == getattr(before, a) for a in rest),
        "other_kept": edited_read.objects[1 - k] == source_read.objects[1 - k],
        "other_psnr": psnr(source_image, edited_image, other_region) if other_region.any() else float("nan"),
        "leakage": float(diff.sum(axis=-1)[outside].mean()) if outside.any() else float("nan"),
        "psnr_outside": psnr(source_image, edited_image, outside) if outside.any() else float("nan"),
    }


def _mean(values: Sequence[float]) -> float:
    kept = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(kept)) if kept else float("nan")


def run_two_object_benchmark(
    pipe: Any,
    n: int = 150,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    batch_size: int = 25,
    editor_kwargs: dict[str, Any] | None = None,
    baseline_kwargs: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TwoObjectBenchResult:
    """Run the two-object benchmark (module docstring) and return a :class:`TwoObjectBenchResult`."""
    from latentlens.shapes import canonical_two_object_caption, read_two_object_batch

    check_methods(methods)
    editor = EMSEditor(pipe, **(editor_kwargs or {}))
    model = shapes_world_model(editor)
    settings_b = baseline_settings(baseline_kwargs)
    cases = make_two_object_cases(n, seed)
    say = progress or (lambda msg: None)
    records: list[dict[str, Any]] = []
    times = {m: 0.0 for m in methods}
    matching = 0
    for start in range(0, n, batch_size):
        chunk = cases[start : start + batch_size]
        prompts = [canonical_two_object_caption(c.scene) for c in chunk]
        noise = model.noise(len(chunk), [c.seed for c in chunk])
        z_src = model.generate(model.encode(prompts), noise=noise)
        src_img = to_uint8(model.decode(z_src))  # [batch, height, width, 3]
        layouts = [c.scene.layout for c in chunk]
        read = read_two_object_batch(src_img, layouts)
        matching += sum(r.objects == c.scene.objects for r, c in zip(read, chunk))
        described = [_described_scene(r, c.scene) for r, c in zip(read, chunk)]
        targets_and_values = [target_scene(scene, c) for scene, c in zip(described, chunk)]
        sources = [canonical_two_object_caption(scene) for scene in described]
        targets = [canonical_two_object_caption(t) for t, _ in targets_and_values]
        e_s, e_t = encode_pair(model, sources, targets)
        batch = EditBatch(editor, z_src, noise, sources, e_s, [c.seed for c in chunk], settings_b)
        for m in methods:
            t0 = time.perf_counter()
            out_img = to_uint8(model.decode(batch.run(m, targets, e_t)))
            times[m] += time.perf_counter() - t0
            judged = read_two_object_batch(out_img, layouts)
            for i, c in enumerate(chunk):
                verdict = judge_two_object_edit(c, src_img[i], read[i], out_img[i], judged[i], targets_and_values[i][1])
                records.append(
                    {
                        "method": m,
                        "case": c.index,
                        "attribute": c.attribute,
                        "object": c.target_object,
                        "source": sources[i],
                        "target": targets[i],
                        **verdict,
                    }
                )
        say(f"edit-bench (two objects): {min(start + len(chunk), n)}/{n} edits done")

    result = TwoObjectBenchResult(
        n=n,
        methods=list(methods),
        sources_matching_prompt=matching / n,
        settings={"baselines": settings_b, "seed": seed, "num_inference_steps": model.num_inference_steps},
        edits=records,
    )
    for m in methods:
        rs = [r for r in records if r["method"] == m]
        success, other_kept = _mean([r["success"] for r in rs]), _mean([r["other_kept"] for r in rs])
        result.rows[m] = {
            "success": success,
            "object_kept": _mean([r["object_kept"] for r in rs]),
            "other_kept": other_kept,
            "score": success * other_kept,
            "other_psnr": _mean([r["other_psnr"] for r in rs]),
            "leakage": _mean([r["leakage"] for r in rs]),
            "psnr_outside": _mean([r["psnr_outside"] for r in rs]),
            "seconds_per_edit": times[m] / n,
        }
        result.per_attribute[m] = {
            a: {
                "n": len(ra),
                "success": _mean([r["success"] for r in ra]),
                "other_kept": _mean([r["other_kept"] for r in ra]),
            }
            for a in EDITED_ATTRIBUTES
            if (ra := [r for r in rs if r["attribute"] == a])
        }
    return result
