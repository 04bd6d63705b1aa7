"""One model's three claims, measured through the public API on the study's fixed prompts and seeds.

- claim 1: ``record_prompts`` of a shapes-world probe set (``probe_samples`` prompts, noise seed = sample
  index, token-mean image features at five steps; block text stream where it exists, and
  ``text.tokens``), then ``analyze_run``: the best held-out probe per attribute and space;
- claim 2: the edit benchmark's per-edit SDE sums (EMS with both spaces, and prompt swap as the
  model's own disentanglement), pooled per attribute with a bootstrap interval; two-object leakage
  from the two-object edit benchmark (EMS, and prompt swap, change one attribute of one object: is
  the other object kept?);
- claim 3: the edit benchmark (``n`` edits cycling through the five attributes) with EMS both /
  text only / image only: success, others kept, PSNR outside the edited object.

Example::

    claims = measure_model(latentlens.load_pipeline("toy"), "runs/study/toy", n=20)
    claims["claim3"]["methods"]["ems"]["success"]   # {'value': ..., 'low': ..., 'high': ..., 'n': 20, ...}
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from latentlens.study.stats import Estimate, mean_interval, sde_interval, wilson

#: denoising steps at which activations are recorded, as fractions of the sampling length
RECORD_STEP_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
FAMILIES = {"sd3": "MM-DiT", "flux": "MM-DiT", "pixart": "cross-attention DiT", "unet": "UNet"}
METHODS = ("ems", "ems_text", "ems_image", "prompt_swap")
#: methods of the two-object leakage edits (claim 2)
TWO_OBJECT_METHODS = ("ems", "prompt_swap")


def family(pipe: Any) -> str:
    """``"MM-DiT"``, ``"cross-attention DiT"`` or ``"UNet"`` from the pipeline's adapter."""
    from latentlens.adapters import adapter_for

    return FAMILIES.get(adapter_for(pipe).name, adapter_for(pipe).name)


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _e(estimate: Estimate) -> dict[str, Any]:
    return estimate.to_dict()


def probe_prompts(n: int, seed: int = 0) -> Any:
    """The study's probe set: ``n`` varied captions of training combinations (all five attributes)."""
    from latentlens.analysis.spec import ProbeSpec
    from latentlens.shapes import ATTRIBUTES

    return ProbeSpec.from_dict(
        {
            "name": "study",
            "world": "shapes",
            "attributes": list(ATTRIBUTES),
            "combinations": "training",
            "samples": int(n),
            "captions": "varied",
            "seed": int(seed),
            "min_samples_per_class": 2,
        },
        source="<latentlens study>",
    )


def measure_claim1(pipe: Any, run_dir: Path, samples: int, num_inference_steps: int, quiet: bool) -> dict[str, Any]:
    from latentlens.analysis.run import analyze_run
    from latentlens.runs import record_prompts

    last = num_inference_steps - 1
    steps = sorted({round(f * last) for f in RECORD_STEP_FRACTIONS})
    record_prompts(
        pipe, probe_prompts(samples), run_dir, sites=["text.tokens", "blocks.*.resid_out.*"], steps=steps,
        reduce="mean_img_tokens", num_inference_steps=num_inference_steps, batch_size=16, overwrite=True,
        progress=False, save_images=False,
    )  # fmt: skip
    analyze_run(run_dir, umap="none", quiet=True)
    from latentlens.results import load_results

    records = load_results(run_dir).probes
    streams: dict[str, dict[str, Any]] = {"img": {}, "txt": {}, "text_encoder": {}}
    for r in records:
        if r.get("nan"):
            continue
        space = "text_encoder" if r["site"] == "text.tokens" else r["stream"]
        if space not in streams:
            continue
        best = streams[space].get(r["attribute"])
        key = (r["accuracy"], r["selectivity"] if r["selectivity"] == r["selectivity"] else 0.0)
        if best is None or key > best["_key"]:
            streams[space][r["attribute"]] = {"_key": key, **r}
    out: dict[str, dict[str, Any]] = {}
    for space, cells in streams.items():
        out[space] = {}
        for attribute, r in sorted(cells.items()):
            n = int(r["n_test"])
            out[space][attribute] = {
                "accuracy": _e(wilson(r["accuracy"] * n, n)),
                "selectivity": float(r["selectivity"]),
                "site": r["site"],
                "block": r["block"],
                "step": int(r["step"]),
            }
    _say(f"study: {run_dir.name}: probes of {samples} samples analysed", quiet)
    return {"streams": out, "samples": samples, "recorded_steps": steps}


def measure_edits(pipe: Any, n: int, num_inference_steps: int, quiet: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Claim 3 (per method) and claim 2's SDE (per attribute) from one run of the edit benchmark."""
    from latentlens.editor.bench import run_benchmark
    from latentlens.shapes import ATTRIBUTES

    result = run_benchmark(
        pipe, n=n, methods=METHODS, seed=0, batch_size=25, sde=True,
        editor_kwargs={"num_inference_steps": num_inference_steps},
        progress=None if quiet else (lambda m: print(m, file=sys.stderr, flush=True)),
    )  # fmt: skip
    methods: dict[str, Any] = {}
    for m in METHODS:
        rows = [r for r in result.edits if r["method"] == m]
        methods[m] = {
            "success": _e(wilson(sum(r["success"] for r in rows), len(rows))),
            "preserved": _e(mean_interval([r["preserved"] for r in rows])),
            "all_kept": _e(wilson(sum(r["all_kept"] for r in rows), len(rows))),
            "psnr_outside": _e(mean_interval([r["psnr_outside"] for r in rows])),
            "seconds_per_edit": result.rows[m]["seconds_per_edit"],
        }
    sde: dict[str, dict[str, Any]] = {"ems": {}, "prompt_swap": {}}
    for m in sde:
        for k, a in enumerate(ATTRIBUTES):
            rows = [r for r in result.edits if r["method"] == m and r["attribute"] == a]
            if rows:
                sde[m][a] = _e(sde_interval(rows, seed=k))
    claim3 = {"methods": methods, "n": n, "sources_matching_prompt": result.sources_matching_prompt}
    return claim3, {"sde": sde["ems"], "sde_prompt_swap": sde["prompt_swap"]}


def measure_two_object(pipe: Any, pairs_per_attribute: int, num_inference_steps: int) -> dict[str, Any]:
    """Claim 2's leakage: EMS edits one object of a two-object scene; is the other object kept?

    The two-object edit benchmark (:mod:`latentlens.editor.bench_two`) with EMS (both spaces) and prompt
    swap (the model's own disentanglement), ``pairs_per_attribute`` edits per object attribute.
    """
    from latentlens.editor.bench_two import EDITED_ATTRIBUTES, run_two_object_benchmark

    result = run_two_object_benchmark(
        pipe, n=pairs_per_attribute * len(EDITED_ATTRIBUTES), methods=TWO_OBJECT_METHODS, seed=0,
        editor_kwargs={"num_inference_steps": num_inference_steps},
    )  # fmt: skip
    found: dict[str, Any] = {}
    for method in TWO_OBJECT_METHODS:
        key = "two_object" if method == "ems" else f"two_object_{method}"
        found[key] = {}
        for a in EDITED_ATTRIBUTES:
            rows = [r for r in result.edits if r["method"] == method and r["attribute"] == a]
            if rows:
                found[key][a] = {
                    "other_object_kept": _e(wilson(sum(r["other_kept"] for r in rows), len(rows))),
                    "edited_object_kept": _e(wilson(sum(r["object_kept"] for r in rows), len(rows))),
                    "target_reached": _e(wilson(sum(r["success"] for r in rows), len(rows))),
                    "other_psnr": _e(mean_interval([r["other_psnr"] for r in rows])),
                }
    return found


def measure_model(
    pipe: Any,
    out_dir: str | Path,
    *,
    n: int,
    probe_samples: int | None = None,
    two_object_pairs: int | None = None,
    num_inference_steps: int | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Measure claims 1–3 of one shapes-world model; its recording goes to ``out_dir/run``."""
    from latentlens.adapters import split_target
    from latentlens.editor.model import EditModel

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = int(num_inference_steps or EditModel.wrap(pipe).num_inference_steps)
    samples = int(probe_samples or max(2 * n, 50))
    pairs = int(two_object_pairs if two_object_pairs is not None else max(n // 3, 2))
    denoiser = split_target(pipe)[0]
    claim1 = measure_claim1(pipe, out / "run", samples, steps, quiet)
    claim3, claim2 = measure_edits(pipe, n, steps, quiet)
    claim2.update(measure_two_object(pipe, pairs, steps) if pairs > 0 else {"two_object": {}})
    claim2["two_object_pairs_per_attribute"] = pairs
    fam = family(pipe)
    return {
        "family": fam,
        "dit": fam != "UNet",
        "pipeline_class": type(pipe).__name__,
        "denoiser_class": type(denoiser).__name__,
        "parameters": int(sum(p.numel() for p in denoiser.parameters())),
        "num_inference_steps": steps,
        "claim1": claim1,
        "claim2": claim2,
        "claim3": claim3,
        "seconds": round(time.perf_counter() - started, 1),
    }


__all__ = ["FAMILIES", "METHODS", "family", "measure_model", "probe_prompts"]
