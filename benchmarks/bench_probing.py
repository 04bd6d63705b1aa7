"""Probing-layer benchmark (issue 2): cost of recording latents and attention maps, and store reads.

Everything runs in one process on a random-weight ``SD3Transformer2DModel`` driven by a plain
10-step Euler loop (timings do not depend on weight values). Variants are interleaved
repetition by repetition and the median is reported, so machine load hits all alike.

1. **Latents**: ``blocks.*.resid_out.{img,txt}`` (all blocks, all steps) recorded by latentlens
   (in memory, and written to a :class:`~latentlens.store.RunStore`) and by nnsight (the same
   block outputs with ``.save()``), against the plain run. Goal: latentlens + store ≤ 1.15× plain
   and not slower than nnsight. Then ``--sequence`` recordings in a row through the background
   writer (the path of ``record_prompts`` and ``latentlens record``) against as many plain runs.
2. **Attention maps**: ``blocks.*.attn.img2txt`` (head mean, all blocks, all steps) by latentlens
   and by the *naive* way — an eager attention processor that materialises
   ``softmax(QKᵀ/√d)`` for all heads and keeps the img2txt quadrant (``naive``) or the full
   probabilities (``naive-full``, what a "store every map" tool does). Goals: latentlens time
   ≤ 1.3× and peak memory ≤ 1.10× plain. A token-count sweep (one denoising step per point) shows
   where the naive way needs > 4× or runs out of memory while latentlens still runs.
3. **Store**: write a synthetic 2,000-sample run through the store API, then read one
   (site, step) slice across all samples. Goal: < 0.5 s.

Memory method: the process runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (large blocks are
mmap'ed, so freed memory leaves the resident set at once); before each measured run we
``gc.collect()``, ``malloc_trim(0)`` and reset the kernel's peak-RSS counter by writing ``5`` to
``/proc/self/clear_refs``; after the run ``VmHWM`` (from ``/proc/self/status``) is the exact peak
resident set of the process during the run — model weights, libraries and everything the run
allocated (tracemalloc cannot see torch's allocations). We report this peak and its increase over
the RSS just before the run ("delta").

Usage::

    python benchmarks/bench_probing.py                    # full run (15-35 min on the shared 2-core CPU), table + JSON
    python benchmarks/bench_probing.py --quick            # a smoke run (~1 min)
    python benchmarks/bench_probing.py --update-results   # also rewrite the probing section of RESULTS.md
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in _MALLOC_ENV.items()):
    os.environ.update(_MALLOC_ENV)  # glibc reads these at start-up: re-exec once with them set
    os.execv(sys.executable, [sys.executable, *sys.argv])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentlens.recorder import record  # noqa: E402
from latentlens.store import RunStore, open_run  # noqa: E402
from latentlens.testing import random_sd3_transformer, sd3_inputs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION_BEGIN = "<!-- probing:begin -->"
SECTION_END = "<!-- probing:end -->"
LATENT_SITES = "blocks.*.resid_out.*"
MAP_SITES = "blocks.*.attn.img2txt"

# ----------------------------------------------------------------------------- memory


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def measure(fn: Callable[[], Any]) -> dict[str, float]:
    """Run ``fn`` once; wall time, peak RSS during the run and its increase over the RSS before."""
    base = _reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    del result
    return {"seconds": seconds, "peak": peak, "delta": peak - base}


# ----------------------------------------------------------------------------- model and loop


def build(layers: int, width: int, heads: int, image_tokens: int, text_tokens: int, batch: int) -> tuple[Any, dict]:
    side = int(round(image_tokens**0.5)) * 2  # patch 2: tokens = (side / 2)^2
    model = random_sd3_transformer(layers, width, heads, sample_size=side)
    inputs = sd3_inputs(model, batch=batch, text_tokens=text_tokens)
    return model, inputs


def denoise(model: Any, inputs: dict, steps: int) -> torch.Tensor:
    """A plain Euler flow-matching loop: one transformer call per step."""
    x = inputs["hidden_states"]
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            t = (sigmas[i] * 1000).expand(x.shape[0])
            v = model(hidden_states=x, timestep=t, encoder_hidden_states=inputs["encoder_hidden_states"],
                      pooled_projections=inputs["pooled_projections"], return_dict=False)[0]
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def run_nnsight(nmodel: Any, model: Any, inputs: dict, steps: int) -> dict[str, torch.Tensor]:
    """The same loop with nnsight saving every block's (txt, img) output at every step."""
    x = inputs["hidden_states"]
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    per_step: list[list[Any]] = []
    with torch.no_grad():
        for i in range(steps):
            t = (sigmas[i] * 1000).expand(x.shape[0])
            saved: list[Any] = []
            with nmodel.trace(hidden_states=x, timestep=t, encoder_hidden_states=inputs["encoder_hidden_states"],
                              pooled_projections=inputs["pooled_projections"], return_dict=False):
                for block in nmodel.transformer_blocks:
                    saved.append(block.output.save())
                out = nmodel.output.save()
            per_step.append(saved)
            x = x + (sigmas[i + 1] - sigmas[i]) * out[0]
    result: dict[str, torch.Tensor] = {}
    for b in range(len(per_step[0])):
        txt = [s[b][0] for s in per_step]
        result[f"blocks.{b}.resid_out.img"] = torch.stack([s[b][1] for s in per_step])  # [step, batch, tok, ch]
        if txt[0] is not None:
            result[f"blocks.{b}.resid_out.txt"] = torch.stack(txt)
    return result


class NaiveJointProcessor:
    """Eager joint attention (the attention-map-tools way): softmax(QKᵀ/√d) for all heads, then P·V.

    ``keep="quadrant"`` keeps the head-mean img2txt block of P; ``keep="full"`` keeps all of P.
    The output matches SD3's own processor up to float rounding.
    """

    def __init__(self, sink: list, keep: str = "quadrant") -> None:
        self.sink = sink
        self.keep = keep

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor = None,
                 attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        batch, n_img = hidden_states.shape[0], hidden_states.shape[1]
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)  # [batch, heads, tokens, d]

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:
            cq = split(attn.add_q_proj(encoder_hidden_states))
            ck = split(attn.add_k_proj(encoder_hidden_states))
            cv = split(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # [batch, heads, N, N]
        if self.keep == "full":
            self.sink.append(probs)
        else:
            self.sink.append(probs[:, :, :n_img, n_img:].mean(1))  # [batch, img, txt]
        out = (probs @ v).transpose(1, 2).reshape(batch, -1, heads * q.shape[-1])
        if encoder_hidden_states is not None:
            out, context = out[:, :n_img], out[:, n_img:]
            if not attn.context_pre_only:
                context = attn.to_add_out(context)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, context) if encoder_hidden_states is not None else out


def run_naive(model: Any, inputs: dict, steps: int, keep: str) -> list:
    original = model.attn_processors
    sink: list = []
    model.set_attn_processor(NaiveJointProcessor(sink, keep))
    try:
        denoise(model, inputs, steps)
    finally:
        model.set_attn_processor(original)
    return sink


def run_latentlens(model: Any, inputs: dict, steps: int, *, sites: Any = None, attention: Any = None,
                   store: Any = None) -> Any:
    with record(model, sites=sites, attention=attention, store=store) as rec:
        denoise(model, inputs, steps)
    return rec


# ----------------------------------------------------------------------------- benchmarks


def _interleave(variants: dict[str, Callable[[], Any]], reps: int, warmup: bool = True) -> dict[str, list[dict]]:
    if warmup:
        for fn in variants.values():
            fn()
    out: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]  # rotate the order each repetition
        for name in order:
            out[name].append(measure(variants[name]))
    return out


def _summary(runs: dict[str, list[dict]], base: str = "plain") -> dict[str, dict[str, float]]:
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak", "delta")} for n, rs in runs.items()}
    for name, m in med.items():
        m["time_ratio"] = m["seconds"] / med[base]["seconds"]
        m["peak_ratio"] = m["peak"] / med[base]["peak"]
        m["reps"] = len(runs[name])
        # median over repetitions of variant/plain measured back to back (robust to drifting machine load)
        pairs = list(zip(runs[name], runs[base]))
        paired_times = [a["seconds"] / b["seconds"] for a, b in pairs]
        m["time_ratio_paired"] = statistics.median(paired_times)
        if name != base and len(paired_times) >= 4:  # their spread: how far one run's verdict can be trusted
            quartiles = statistics.quantiles(paired_times, n=4)
            m["time_ratio_paired_quartiles"] = [quartiles[0], quartiles[2]]
        m["peak_ratio_paired"] = statistics.median(a["peak"] / b["peak"] for a, b in pairs)
    return med


def bench_latents(cfg: argparse.Namespace) -> dict[str, Any]:
    from nnsight import NNsight

    model, inputs = build(cfg.layers, cfg.width, cfg.heads, cfg.latent_tokens, cfg.text_tokens, cfg.batch)
    nmodel = NNsight(model)
    tmp = tempfile.mkdtemp(prefix="bench_probing_")
    store = RunStore.create(Path(tmp) / "run", {"prompts": ["bench"] * (cfg.reps + 2)})
    variants = {
        "plain": lambda: denoise(model, inputs, cfg.steps),
        "latentlens": lambda: run_latentlens(model, inputs, cfg.steps, sites=LATENT_SITES),
        "latentlens+store": lambda: run_latentlens(model, inputs, cfg.steps, sites=LATENT_SITES, store=store),
        "nnsight": lambda: run_nnsight(nmodel, model, inputs, cfg.steps),
    }
    # the two recorders capture the same tensors
    rec = run_latentlens(model, inputs, cfg.steps, sites=LATENT_SITES)
    nn_out = run_nnsight(nmodel, model, inputs, cfg.steps)
    assert sorted(rec.names) == sorted(nn_out), (sorted(rec.names), sorted(nn_out))
    for name in rec.names:
        torch.testing.assert_close(rec[name], nn_out[name])
    recorded_bytes = sum(rec[n].numel() * rec[n].element_size() for n in rec.names)
    runs = _interleave(variants, cfg.reps)
    store.close()
    written = open_run(Path(tmp) / "run")
    sequence = bench_write_ahead(model, inputs, cfg, Path(tmp)) if cfg.sequence else None
    return {
        "config": _config(cfg, cfg.latent_tokens),
        "recorded_mb_per_run": recorded_bytes / 2**20,
        "store_samples_written": len(written.completed),
        "results": _summary(runs),
        **({"write_ahead": sequence} if sequence else {}),
    }


def bench_write_ahead(model: Any, inputs: dict, cfg: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """``cfg.sequence`` recordings in a row, each written by a background writer while the next one computes.

    This is what ``record_prompts`` / ``latentlens record`` do (``write_ahead=1``); the time includes waiting
    for the last write (``writer.close()``), so every byte written is paid for. Baseline: the same number of
    plain runs back to back. All sequences write into one store (created, and its arrays made, by a first
    recording before timing), as a long ``latentlens record`` run does after its first batch.
    """
    from latentlens.store_writer import BackgroundWriter

    def plain_sequence() -> None:
        for _ in range(cfg.sequence):
            denoise(model, inputs, cfg.steps)

    total = 1 + cfg.sequence * (cfg.reps + 1)  # the untimed first recording, the warm-up and every repetition
    store = RunStore.create(tmp / "sequence", {"prompts": ["bench"] * total})
    store.add_recording(run_latentlens(model, inputs, cfg.steps, sites=LATENT_SITES))

    def recorded_sequence() -> None:
        with BackgroundWriter(max_pending=1) as writer:
            for _ in range(cfg.sequence):
                rec = run_latentlens(model, inputs, cfg.steps, sites=LATENT_SITES)
                writer.submit(lambda rec=rec: store.add_recording(rec))

    runs = _interleave({"plain": plain_sequence, "latentlens+store, write-ahead": recorded_sequence}, cfg.reps)
    store.close()
    assert len(open_run(tmp / "sequence").completed) == total, "every recording of every sequence is journaled"
    return {"recordings_per_sequence": cfg.sequence, "results": _summary(runs)}


def bench_attention(cfg: argparse.Namespace) -> dict[str, Any]:
    model, inputs = build(cfg.layers, cfg.width, cfg.heads, cfg.map_tokens, cfg.text_tokens, cfg.batch)
    # exactness check of the naive implementation against the model's own output
    ref = denoise(model, inputs, 1)
    naive_out = _naive_output(model, inputs)
    torch.testing.assert_close(naive_out, ref, rtol=1e-4, atol=1e-4)
    variants = {
        "plain": lambda: denoise(model, inputs, cfg.steps),
        "latentlens": lambda: run_latentlens(model, inputs, cfg.steps, attention=MAP_SITES),
        "naive": lambda: run_naive(model, inputs, cfg.steps, "quadrant"),
    }
    runs = _interleave(variants, cfg.map_reps)
    return {"config": _config(cfg, cfg.map_tokens), "results": _summary(runs)}


def _naive_output(model: Any, inputs: dict) -> torch.Tensor:
    original = model.attn_processors
    model.set_attn_processor(NaiveJointProcessor([], "quadrant"))
    try:
        return denoise(model, inputs, 1)
    finally:
        model.set_attn_processor(original)


def bench_sweep(cfg: argparse.Namespace) -> list[dict[str, Any]]:
    """One denoising step per point; the naive-full variant only where its projected need fits."""
    rows = []
    available = _available_bytes()
    for tokens in cfg.sweep:
        model, inputs = build(cfg.layers, cfg.width, cfg.heads, tokens, cfg.text_tokens, cfg.batch)
        n = tokens + cfg.text_tokens
        steps = cfg.sweep_steps
        full_need = cfg.layers * steps * cfg.batch * cfg.heads * n * n * 4  # every kept probability, fp32
        quadrant_transient = 3 * cfg.batch * cfg.heads * n * n * 4  # scores, softmax, P@V workspace per block
        variants: dict[str, Callable[[], Any]] = {
            "plain": lambda: denoise(model, inputs, steps),
            "latentlens": lambda: run_latentlens(model, inputs, steps, attention=MAP_SITES),
        }
        skipped = {}
        if quadrant_transient < cfg.mem_budget * 2**30:
            variants["naive"] = lambda: run_naive(model, inputs, steps, "quadrant")
        else:
            skipped["naive"] = quadrant_transient
        if full_need < min(cfg.mem_budget * 2**30, available // 2):
            variants["naive-full"] = lambda: run_naive(model, inputs, steps, "full")
        else:
            skipped["naive-full"] = full_need
        runs = _interleave(variants, cfg.sweep_reps, warmup=tokens <= 1024)
        summary = _summary(runs)
        for name, need in skipped.items():
            summary[name] = {"skipped": True, "projected_bytes": need,
                             "projected_peak_ratio": (summary["plain"]["peak"] + need) / summary["plain"]["peak"]}
        rows.append({"image_tokens": tokens, "text_tokens": cfg.text_tokens, "steps": steps, "results": summary,
                     "naive_full_projected_bytes": full_need})
        del model, inputs, variants
        gc.collect()
    return rows


def bench_store(cfg: argparse.Namespace) -> dict[str, Any]:
    """Write a synthetic run of ``cfg.store_samples`` samples through the store API; time one (site, step) read."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    steps, tokens, channels = cfg.store_shape
    out: dict[str, Any] = {"samples": cfg.store_samples, "sample_shape": [steps, tokens, channels], "dtype": "float32"}
    rng = np.random.default_rng(0)
    batch = cfg.store_batch
    block = rng.standard_normal((batch, steps, tokens, channels)).astype(np.float32)
    manifest = {"prompts": [f"p{i}" for i in range(cfg.store_samples)]}
    for spc in cfg.store_chunks:
        path = tmp / f"run_spc{spc}"
        store = RunStore.create(path, manifest, samples_per_chunk=spc)
        start = time.perf_counter()
        for first in range(0, cfg.store_samples, batch):
            ids = list(range(first, min(first + batch, cfg.store_samples)))
            store.write_samples(ids, {"blocks.3.resid_out.img": block[: len(ids)]},
                                dims={"blocks.3.resid_out.img": ("sample", "step", "token", "channel")})
            store.mark_complete(ids)
        write_s = time.perf_counter() - start
        store.close()
        start = time.perf_counter()
        os.sync()  # the run is read later, not while the kernel is still flushing it to disk
        sync_s = time.perf_counter() - start
        reads = []
        for rep in range(cfg.store_reads):
            run = open_run(path)  # a fresh reader each time: includes opening the run and its metadata
            start = time.perf_counter()
            data = run["blocks.3.resid_out.img"][:, (rep * 3) % steps]
            reads.append(time.perf_counter() - start)
            assert data.shape == (cfg.store_samples, tokens, channels)
        out[f"samples_per_chunk={spc}"] = {
            "write_seconds": write_s,
            "sync_seconds": sync_s,
            "write_mb_per_s": cfg.store_samples * block[0].nbytes / 2**20 / write_s,
            "read_seconds_median": statistics.median(reads),
            "read_seconds_max": max(reads),
            "read_mb": cfg.store_samples * tokens * channels * 4 / 2**20,
            "chunk_files_read": -(-cfg.store_samples // spc),
        }
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    return out


def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _available_bytes() -> int:
    return _meminfo("MemAvailable")


def _config(cfg: argparse.Namespace, tokens: int) -> dict[str, Any]:
    return {"layers": cfg.layers, "width": cfg.width, "heads": cfg.heads, "image_tokens": tokens,
            "text_tokens": cfg.text_tokens, "steps": cfg.steps, "batch": cfg.batch, "threads": cfg.threads}


# ----------------------------------------------------------------------------- report


def _mb(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def _paired(m: dict[str, Any], kind: str) -> str:
    """The paired ratio, with its quartiles where there are enough repetitions: ``1.021 (0.998–1.040)``."""
    value = m.get(f"{kind}_ratio_paired")
    if value is None:
        return ""
    quartiles = m.get(f"{kind}_ratio_paired_quartiles")
    return f"{value:.3f}" + (f" ({quartiles[0]:.3f}–{quartiles[1]:.3f})" if quartiles else "")


def _ratio(m: dict[str, float], kind: str) -> float:
    """The paired ratio where measured (robust to load drift), else the ratio of medians."""
    return m.get(f"{kind}_ratio_paired", m[f"{kind}_ratio"])


#: the head of the latents tables: one row per variant, times against plain
RATIO_TABLE_HEAD = ("| variant | seconds | × plain | × plain, paired (quartiles) | goal |", "| --- | ---: | ---: | ---: | --- |")


def render(report: dict[str, Any]) -> str:
    lines = []
    goals = {"latentlens+store": "≤ 1.15×, ≤ nnsight"}
    if "latents" in report:
        lat = report["latents"]
        c = lat["config"]
        lines += [f"**Latents** — `{LATENT_SITES}` ({lat['recorded_mb_per_run']:.0f} MB per run), "
                  f"{c['layers']} blocks, width {c['width']}, {c['image_tokens']} image + {c['text_tokens']} text tokens, "
                  f"{c['steps']} steps, batch {c['batch']}, median of {lat['results']['plain']['reps']}:", "",
                  *RATIO_TABLE_HEAD]
        for name, m in lat["results"].items():
            lines.append(f"| {name} | {m['seconds']:.2f} | {m['time_ratio']:.3f} | {_paired(m, 'time')} | "
                         f"{goals.get(name, '')} |")
        lines.append("")
        if "write_ahead" in lat:
            seq = lat["write_ahead"]
            lines += [f"**Latents to the store, write-ahead** — {seq['recordings_per_sequence']} recordings in a row, "
                      "each written by the background writer while the next computes (as `record_prompts` and "
                      "`latentlens record` do); seconds per sequence, including the wait for the last write:", "",
                      *RATIO_TABLE_HEAD]
            for name, m in seq["results"].items():
                goal = "≤ 1.05×" if name != "plain" else ""
                lines.append(f"| {name} | {m['seconds']:.2f} | {m['time_ratio']:.3f} | {_paired(m, 'time')} | {goal} |")
            lines.append("")
    if "attention" in report:
        att = report["attention"]
        c = att["config"]
        lines += [f"**Attention maps** — `{MAP_SITES}` (head mean), {c['layers']} blocks, width {c['width']}, "
                  f"{c['image_tokens']} image + {c['text_tokens']} text tokens, {c['steps']} steps, "
                  f"median of {att['results']['plain']['reps']}:", "",
                  "| variant | seconds | × plain | × plain, paired | peak RSS MB | × plain | delta MB |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, m in att["results"].items():
            lines.append(f"| {name} | {m['seconds']:.2f} | {m['time_ratio']:.3f} | {_paired(m, 'time')} | "
                         f"{_mb(m['peak'])} | {m['peak_ratio']:.3f} | {_mb(m['delta'])} |")
        lines.append("")
    if "sweep" in report:
        lines += ["**Token sweep** (attention maps, one denoising step per point; `naive-full` keeps every "
                  "probability as map-storing tools do; *skipped* = projected need over the budget):", "",
                  "| image tokens | variant | seconds | × plain | peak RSS MB | × plain |",
                  "| ---: | --- | ---: | ---: | ---: | ---: |"]
        for row in report["sweep"]:
            for name, m in row["results"].items():
                if m.get("skipped"):
                    lines.append(f"| {row['image_tokens']} | {name} | not run | | needs +{_mb(m['projected_bytes'])} | "
                                 f"≈{m['projected_peak_ratio']:.1f} |")
                else:
                    lines.append(f"| {row['image_tokens']} | {name} | {m['seconds']:.2f} | {m['time_ratio']:.2f} | "
                                 f"{_mb(m['peak'])} | {m['peak_ratio']:.2f} |")
        steps = report.get("full_steps", 10)
        ram = report.get("ram_bytes") or _meminfo("MemTotal")
        lines.append("")
        for row in report["sweep"]:
            need = row["naive_full_projected_bytes"] * steps / row["steps"]
            lines.append(f"- `naive-full` for a {steps}-step run at {row['image_tokens']} image tokens keeps "
                         f"{need / 2**30:,.1f} GiB of probabilities" + (f" (this machine has {ram / 2**30:.0f} GiB: "
                         + ("out of memory" if need > ram else "fits") + ")" if ram else ""))
        lines.append("")
    if "store" in report:
        st = report["store"]
        lines += [f"**Store** — {st['samples']} samples × {st['sample_shape']} float32 written through the store API, "
                  "then one (site, step) read across all samples (a fresh reader each time, after `os.sync()`, "
                  "page cache warm):", "",
                  "| samples_per_chunk | write s (MB/s) | read s (median / max) | MB read | chunk files |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for key, m in st.items():
            if key.startswith("samples_per_chunk="):
                lines.append(f"| {key.split('=')[1]} | {m['write_seconds']:.1f} ({m['write_mb_per_s']:.0f}) | "
                             f"{m['read_seconds_median']:.3f} / {m['read_seconds_max']:.3f} | {m['read_mb']:.0f} | "
                             f"{m['chunk_files_read']} |")
        lines.append("")
    return "\n".join(lines)


def verdicts(report: dict[str, Any]) -> list[str]:
    """One line per goal of issue 2: met or missed, with the measured figure."""
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"- {'met' if ok else '**missed**'}: {text}")

    if "latents" in report:
        r = report["latents"]["results"]
        st, mem, nn = (_ratio(r[k], "time") for k in ("latentlens+store", "latentlens", "nnsight"))
        line(st <= 1.15, f"latents to the store {st:.3f}× plain (goal ≤ 1.15×)")
        line(mem <= nn, f"latentlens in memory {mem:.3f}× vs nnsight in memory {nn:.3f}× (not slower)")
        line(st <= nn, f"latentlens including the store writes {st:.3f}× vs nnsight (in memory, no store) {nn:.3f}×")
        if "write_ahead" in report["latents"]:
            wa = _ratio(report["latents"]["write_ahead"]["results"]["latentlens+store, write-ahead"], "time")
            line(wa <= 1.05, f"latents to the store with the background writer {wa:.3f}× plain (goal ≤ 1.05×)")
    if "attention" in report:
        r = report["attention"]["results"]["latentlens"]
        t, p = _ratio(r, "time"), _ratio(r, "peak")
        line(t <= 1.3, f"attention maps time {t:.3f}× plain (goal ≤ 1.3×)")
        line(p <= 1.10, f"attention maps peak memory {p:.3f}× plain (goal ≤ 1.10×)")
    for row in report.get("sweep", []):
        res = row["results"]
        bad = []
        for name in ("naive", "naive-full"):
            m = res.get(name, {})
            if m.get("skipped"):
                bad.append(f"{name} not runnable (needs +{_mb(m['projected_bytes'])} MB)")
            elif m and (m["time_ratio"] > 4 or m["peak_ratio"] > 4):
                bad.append(f"{name} {m['time_ratio']:.2f}× time, {m['peak_ratio']:.2f}× memory")
        if bad:
            ll = res["latentlens"]
            out.append(f"- at {row['image_tokens']} image tokens: {'; '.join(bad)}, while latentlens runs at "
                       f"{ll['time_ratio']:.2f}× time, {ll['peak_ratio']:.2f}× memory")
            break
    if "store" in report:
        m = report["store"].get("samples_per_chunk=8") or next(v for k, v in report["store"].items() if k.startswith("samples_per_chunk="))
        line(m["read_seconds_median"] < 0.5, f"store read of one (site, step) across {report['store']['samples']} "
             f"samples {m['read_seconds_median']:.3f} s median, {m['read_seconds_max']:.3f} s max (goal < 0.5 s)")
    return out


NOTES_BEGIN, NOTES_END = "<!-- probing-notes:begin -->", "<!-- probing-notes:end -->"


def update_results(report: dict[str, Any], command: str) -> None:
    body = "\n".join([
        SECTION_BEGIN,
        "## Probing layer (issue 2)",
        "",
        f"Machine: 2-core CPU sandbox (shared with other jobs; torch {torch.__version__}, {report['threads']} torch "
        f"thread(s)), {report['date']}. Command: `{command}`.",
        "",
        "Memory = peak resident set of the process during the run (`VmHWM` after resetting it via "
        "`/proc/self/clear_refs`, glibc `MALLOC_MMAP_THRESHOLD_=65536` so freed blocks leave the RSS); "
        "delta = that peak minus the RSS just before the run.",
        "",
        render(report),
        "Goals:",
        "",
        *verdicts(report),
        "",
        "{notes}",
        SECTION_END,
    ])
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    notes = NOTES_BEGIN + "\n" + NOTES_END  # hand-written analysis, kept across reruns
    if NOTES_BEGIN in text and NOTES_END in text:
        notes = NOTES_BEGIN + text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0] + NOTES_END
    body = body.replace("{notes}", notes)
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        tail = rest.split(SECTION_END, 1)[1]
        text = head + body + tail
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions (a smoke run)")
    parser.add_argument("--only", nargs="*", choices=["latents", "attention", "sweep", "store"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--text-tokens", type=int, default=77)
    parser.add_argument("--latent-tokens", type=int, default=256, help="image tokens of the latents benchmark")
    parser.add_argument("--map-tokens", type=int, default=1024, help="image tokens of the attention benchmark")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=4,
                        help="recordings per write-ahead sequence (0: skip that measurement)")
    parser.add_argument("--reps", type=int, default=9,
                        help="repetitions of the latents runs (the ratios move by about ±3 points between runs here)")
    parser.add_argument("--map-reps", type=int, default=3)
    parser.add_argument("--sweep", type=int, nargs="*", default=[256, 1024, 4096])
    parser.add_argument("--sweep-steps", type=int, default=1)
    parser.add_argument("--sweep-reps", type=int, default=1)
    parser.add_argument("--mem-budget", type=float, default=6.0, help="GiB a naive variant may be projected to need")
    parser.add_argument("--store-samples", type=int, default=2000)
    parser.add_argument("--store-shape", type=int, nargs=3, default=[10, 64, 192], metavar=("STEPS", "TOKENS", "CH"),
                        help="per-sample shape (default: the toy model's image stream, 10 steps)")
    parser.add_argument("--store-batch", type=int, default=8)
    parser.add_argument("--store-chunks", type=int, nargs="*", default=[8, 1])
    parser.add_argument("--store-reads", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core box, 2 threads thrash and the noise swamps the ratios)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report here")
    parser.add_argument("--update-results", action="store_true", help="rewrite the probing section of benchmarks/RESULTS.md")
    parser.add_argument("--from-json", type=Path, help="render a saved JSON report (with --update-results) instead of measuring")
    cfg = parser.parse_args(argv)
    if cfg.from_json:
        report = json.loads(cfg.from_json.read_text())
        print(render(report))
        if cfg.update_results:
            update_results(report, report.get("command", "python benchmarks/bench_probing.py"))
        return 0
    if cfg.quick:
        cfg.layers, cfg.width, cfg.heads, cfg.steps = 4, 256, 4, 4
        cfg.latent_tokens, cfg.map_tokens, cfg.reps, cfg.map_reps = 64, 256, 2, 2
        cfg.sequence = 2
        cfg.sweep, cfg.store_samples, cfg.store_chunks, cfg.store_reads = [64, 256], 200, [8], 2
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    parts = cfg.only or ["latents", "attention", "sweep", "store"]
    report: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"2-core CPU sandbox ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)",
        "threads": cfg.threads,
        "ram_bytes": _meminfo("MemTotal"),
        "full_steps": cfg.steps,
        "command": "python benchmarks/bench_probing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    for part, fn in (("latents", bench_latents), ("attention", bench_attention), ("sweep", bench_sweep),
                     ("store", bench_store)):
        if part in parts:
            start = time.perf_counter()
            report[part] = fn(cfg)
            print(f"[{part}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    print(render(report))
    document = json.dumps(report, indent=2, default=float)
    print(document)
    if cfg.json_out:
        cfg.json_out.write_text(document)
    if cfg.update_results:
        update_results(report, report["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
