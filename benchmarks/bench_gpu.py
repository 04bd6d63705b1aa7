"""GPU benchmark (real scale): plain vs latentlens latents / maps vs nnsight, SD3-medium and Flux.1-dev size.

Random weights at the published widths (``latentlens.testing.real_transformer``; timings do not
depend on weight values), a plain Euler loop with the batch doubled for classifier-free guidance
(SD3) or guidance-embedded (Flux), 1024² (4,096 image tokens) and the real text length (333 / 512).
Rows per model, measured in one process, variants interleaved repetition by repetition (median):

- ``plain``: the model alone;
- ``latents``: ``blocks.*.resid_out.*`` at every step, written to a run store on local disk;
- ``maps``: ``blocks.*.attn.img2txt`` (head mean) of every block at every step, in memory;
- ``nnsight``: the same block outputs saved with nnsight (in memory, as nnsight keeps them).

Time is wall-clock with the device synchronised; memory is the device's peak allocation
(``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set). ``--quick`` runs
a tiny smoke on whatever device is there (CPU included) and touches no results file.

Usage::

    benchmarks/gpu.sh                  # on the GPU machine: installs the carried wheels, runs, appends RESULTS.md
    python benchmarks/bench_gpu.py --quick
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentlens import record, testing  # noqa: E402
from latentlens.size_plan import CUDA_RECORDING_HOST_BYTES_PER_BYTE, available_host_bytes  # noqa: E402
from latentlens.store import RunStore  # noqa: E402

LATENTS = "blocks.*.resid_out.*"
MAPS = "blocks.*.attn.img2txt"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(fn: Callable[[], Any], device: torch.device) -> dict[str, float]:
    _peak_reset(device)
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = _peak(device)
    del result
    return {"seconds": seconds, "peak": peak}


class Setup:
    """One model, its inputs and the denoising loop."""

    def __init__(self, name: str, layers: int | None, single: int | None, tokens: int, text: int | None,
                 steps: int, dtype: torch.dtype, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.steps = steps
        self.model = testing.real_transformer(name, num_layers=layers, num_single_layers=single, dtype=dtype,
                                              device=device)
        self.flux = self.model.config.get("num_single_layers") is not None
        batch = 1 if self.flux else 2  # SD3: [uncond, cond] for classifier-free guidance
        inputs = testing.real_inputs(name, self.model, image_tokens=tokens, batch=batch, text_tokens=text)
        self.inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        self.depth = len(self.model.transformer_blocks) + len(getattr(self.model, "single_transformer_blocks", []))

    def call_kwargs(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        kw = {k: v for k, v in self.inputs.items() if k not in ("hidden_states", "timestep")}
        return {"hidden_states": x, "timestep": t, **kw, "return_dict": False}

    def denoise(self, model: Any = None) -> torch.Tensor:
        model = model or self.model
        x = self.inputs["hidden_states"]
        sigmas = torch.linspace(1.0, 0.0, self.steps + 1)
        scale = 1.0 if self.flux else 1000.0
        with torch.no_grad():
            for i in range(self.steps):
                t = torch.full((x.shape[0],), float(sigmas[i]) * scale, device=self.device, dtype=x.dtype)
                v = model(**self.call_kwargs(x, t))[0]
                x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x

    def latents(self, store_root: Path) -> Any:
        path = store_root / f"run-{time.monotonic_ns()}"
        store = RunStore.create(path, {"prompts": ["bench"]})
        with record(self.model, sites=LATENTS, cfg="cond", dtype=torch.float16, store=store) as rec:
            self.denoise()
        store.close()
        shutil.rmtree(path, ignore_errors=True)
        return rec

    def maps(self) -> Any:
        with record(self.model, attention=MAPS, cfg="cond") as rec:
            self.denoise()
        return rec

    def nnsight(self, nmodel: Any) -> list:
        x = self.inputs["hidden_states"]
        sigmas = torch.linspace(1.0, 0.0, self.steps + 1)
        scale = 1.0 if self.flux else 1000.0
        saved: list = []
        with torch.no_grad():
            for i in range(self.steps):
                t = torch.full((x.shape[0],), float(sigmas[i]) * scale, device=self.device, dtype=x.dtype)
                with nmodel.trace(**self.call_kwargs(x, t)):
                    for block in nmodel.transformer_blocks:
                        saved.append(block.output.save())
                    for block in getattr(nmodel, "single_transformer_blocks", []):
                        saved.append(block.output.save())
                    out = nmodel.output.save()
                x = x + (sigmas[i + 1] - sigmas[i]) * out[0]
        return saved


def latent_bytes(name: str, layers: int | None, single: int | None, tokens: int, text: int | None,
                 steps: int) -> int:
    """Bytes one image's ``blocks.*.resid_out.*`` take at every step, in float16, the cond branch only."""
    config = testing.REAL_CONFIGS[name]
    depth = (layers if layers is not None else config["num_layers"]) + (
        (single if single is not None else config["num_single_layers"]) if "num_single_layers" in config else 0)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    text_tokens = text if text is not None else testing.REAL_TEXT[name]["tokens"]
    return depth * (tokens + text_tokens) * width * 2 * steps


def fit_depth(name: str, tokens: int, steps: int,
              store_root: Path) -> tuple[int | None, int | None, str | None]:
    """``(layers, single, why)``: the depth whose latents row fits host memory and the store's disk (None, None,
    None: the full model fits; else cut in depth, Flux's single-stream blocks first, and ``why`` says so)."""
    config = testing.REAL_CONFIGS[name]
    host = available_host_bytes()
    disk = shutil.disk_usage(store_root).free
    budgets = [(0.85 * disk, "disk")] + ([(0.85 * host / CUDA_RECORDING_HOST_BYTES_PER_BYTE, "host memory")] if host else [])
    limit, what = min(budgets)
    need = latent_bytes(name, None, None, tokens, None, steps)
    if need <= limit:
        return None, None, None
    flux = "num_single_layers" in config
    layers = config["num_layers"]
    single = config["num_single_layers"] if flux else None
    while latent_bytes(name, layers, single, tokens, None, steps) > limit:
        if flux and single:
            single -= 1
        elif layers > 1:
            layers -= 1
        else:
            break
    why = (f"{need / 2**30:.0f} GiB of latents per image would not fit the {what} "
           f"({limit / 2**30:.0f} GiB usable)")
    return layers, single, why


def bench_model(setup: Setup, reps: int, store_root: Path, with_nnsight: bool) -> dict[str, dict[str, float]]:
    variants: dict[str, Callable[[], Any]] = {
        "plain": setup.denoise,
        "latents": lambda: setup.latents(store_root),
        "maps": setup.maps,
    }
    if with_nnsight:
        try:
            from nnsight import NNsight

            nmodel = NNsight(setup.model)
            variants["nnsight"] = lambda: setup.nnsight(nmodel)
        except ImportError as error:
            print(f"nnsight unavailable ({error}); its row is left out", file=sys.stderr)
    for name, fn in variants.items():  # warm-up (kernels, allocator, the fast-map verification)
        start = time.perf_counter()
        fn()
        _sync(setup.device)
        print(f"{setup.name}: warm-up {name} {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in variants}
    names = list(variants)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            runs[name].append(measure(variants[name], setup.device))
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak")} for n, rs in runs.items()}
    for m in med.values():
        m["time_ratio"] = m["seconds"] / med["plain"]["seconds"]
        m["mem_ratio"] = m["peak"] / med["plain"]["peak"]
    return med


def render(report: dict[str, Any]) -> str:
    lines = [
        f"GPU benchmark ({report['device']}, {report['date']}, torch {report['torch']}): "
        f"{report['dtype']}, {report['steps']} steps, {report['image_tokens']} image tokens, reps {report['reps']}",
        "",
        "| model | variant | time (s) | × plain | peak memory (GiB) | × plain |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for model in report["models"]:
        if "error" in model:
            lines.append(f"| {model['label']} | failed: {model['error']} | | | | |")
            continue
        for variant, m in model["results"].items():
            lines.append(f"| {model['label']} | {variant} | {m['seconds']:.3f} | {m['time_ratio']:.3f} | "
                         f"{m['peak'] / 2**30:.2f} | {m['mem_ratio']:.3f} |")
    lines.append("")
    lines.append(f"Command: `{report['command']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (any device), no results file")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--image-tokens", type=int, default=4096)
    parser.add_argument("--flux-single-layers", type=int, default=None,
                        help="cut Flux in depth (single-stream blocks) if memory demands it")
    parser.add_argument("--models", nargs="*", default=["sd3-medium", "flux.1-dev"])
    parser.add_argument("--no-nnsight", action="store_true")
    parser.add_argument("--store-dir", type=Path, default=None, help="local-disk folder for the latents store")
    parser.add_argument("--append", type=Path, default=None, help="append the table to this markdown file")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)
    if args.quick:
        args.steps, args.reps, args.image_tokens = 2, 1, 256
    store_root = Path(tempfile.mkdtemp(prefix="ll-gpu-bench-", dir=args.store_dir))
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no GPU)",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "steps": args.steps,
        "reps": args.reps, "image_tokens": args.image_tokens, "models": [],
        "command": " ".join(["benchmarks/bench_gpu.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    try:
        for name in args.models:
            layers = single = text = None
            cut = None
            if args.quick:
                layers, single, text = 1, 1, 64
                cut = "--quick"
            elif name.startswith("flux") and args.flux_single_layers is not None:
                single = args.flux_single_layers
                cut = "--flux-single-layers"
            else:
                layers, single, cut = fit_depth(name, args.image_tokens, args.steps, store_root)
                if cut:
                    print(f"{name}: {cut}; cut in depth to fit", file=sys.stderr, flush=True)
            failure = None
            try:
                setup = Setup(name, layers, single, args.image_tokens, text, args.steps, dtype, device)
                label = f"{name}-size ({setup.depth} blocks)" + (f" [cut in depth: {cut}]" if cut else "")
                results = bench_model(setup, args.reps, store_root, not args.no_nnsight)
            except Exception as error:  # one model failing (memory, disk) must not lose the others' rows
                failure = f"{type(error).__name__}: {str(error)[:300]}"
            if failure is not None:  # outside the except: its traceback no longer holds the model
                print(f"{name}: FAILED: {failure}", file=sys.stderr, flush=True)
                report["models"].append({"name": name, "label": f"{name}-size", "error": failure})
            else:
                report["models"].append({"name": name, "label": label, "results": results})
                # each model's rows as soon as they exist: a run stopped later still leaves them behind
                print(f"{label}: " + ", ".join(f"{v} {m['seconds']:.2f} s ({m['time_ratio']:.3f}x time, "
                                               f"{m['mem_ratio']:.3f}x memory)" for v, m in results.items()),
                      file=sys.stderr, flush=True)
            if args.json_out:
                args.json_out.write_text(json.dumps(report, indent=2))
            setup = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(store_root, ignore_errors=True)
    table = render(report)
    print(table)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    if args.append and not args.quick:
        with open(args.append, "a") as handle:
            handle.write(f"\n### GPU real scale — {report['device']}, {report['date']}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
