"""``latentlens demo``: record the shapes probes with the bundled toy model, analyse them, serve the dashboard.

Everything is resumable: a rerun skips samples already recorded and an analysis
already computed for them.

Example::

    $ latentlens demo                     # ~a few minutes on a laptop CPU, then http://127.0.0.1:8050/
    $ latentlens demo --limit 64 --no-serve --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from latentlens.errors import ConfigError, LatentlensError

NAME = "demo"
HELP = "Record the shapes probes with the toy model, analyse them and open the dashboard (resumable)."

SPEC = "shapes.yaml"
RUN_NAME = "shapes"
SITES = "blocks.*.resid_out.*"
ATTENTION = "blocks.*.attn.img2txt"
STEPS = (0, 4, 8, 12, 16, 19)  # denoising steps recorded (of the toy's 20): the picture at a sixth of the disk
DTYPE = "float16"
DEFAULT_LIMIT = 120
STATE_FILE = "demo.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from latentlens.cli.options import MODEL_HELP

    parser.add_argument(
        "--out", default="runs/demo", metavar="DIR", help="where the demo's run is kept (default runs/demo)."
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"record the first N prompts of the shapes spec (default {DEFAULT_LIMIT}; keeps the demo to minutes).",
    )
    parser.add_argument("--model", default="toy", help=MODEL_HELP)
    parser.add_argument(
        "--spec", default=None, metavar="SPEC.yaml", help="probe spec (default: the shipped probes/shapes.yaml)."
    )
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="prompts per pipeline call (default 8).")
    parser.add_argument("--port", type=int, default=8050, help="dashboard port (default 8050).")
    parser.add_argument("--host", default="127.0.0.1", help="dashboard address (default 127.0.0.1).")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab.")
    parser.add_argument("--no-serve", action="store_true", help="stop after recording and analysing.")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document with what was done (implies --no-serve)."
    )


def _spec_path(given: str | None) -> Path:
    from latentlens.analysis.spec import load_probe_spec  # noqa: F401 - validates the import early

    if given:
        return Path(given)
    here = Path(__file__).resolve()
    for candidate in (Path.cwd() / "probes" / SPEC, here.parents[3] / "probes" / SPEC):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"The shapes probe spec {SPEC} was not found in ./probes or next to latentlens; pass --spec PATH."
    )


def _analysis_command() -> Any:
    from latentlens.cli import command_modules

    for module in command_modules():
        if module.NAME == "analyze":
            return module
    return None


def record_step(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Record (or finish recording) the first ``--limit`` prompts of the spec into ``run_dir``."""
    import latentlens

    spec = latentlens.load_probe_spec(_spec_path(args.spec))
    prompts = spec.prompts()
    limit = min(int(args.limit), len(prompts))
    if (run_dir / "manifest.json").is_file():
        done = latentlens.open_run(run_dir).completed
        if all(i in done for i in range(limit)):
            print(f"demo: {limit} samples already recorded in {run_dir}; skipping the recording.", file=sys.stderr)
            return {"recorded_now": 0, "samples": len(done), "seconds": 0.0}
    print(f"demo: recording {limit} shapes prompts with model {args.model!r} into {run_dir} …", file=sys.stderr)
    pipe = latentlens.load_pipeline(args.model)
    import torch

    from latentlens.runs import default_num_inference_steps

    n_steps = int(default_num_inference_steps(pipe) or 20)
    steps = sorted({s for s in STEPS if s < n_steps} | {n_steps - 1})
    result = latentlens.record_prompts(
        pipe,
        prompts,
        run_dir,
        sites=SITES,
        attention=ATTENTION,
        steps=steps,
        dtype=getattr(torch, DTYPE),
        batch_size=int(args.batch_size),
        limit=limit,
        resume=(run_dir / "manifest.json").is_file(),
        model_id=args.model,
    )
    return {"recorded_now": len(result.recorded_now), "samples": result.samples, "seconds": round(result.seconds, 2)}


def analyse_step(run_dir: Path, root: Path, samples: int) -> dict[str, Any]:
    """Run ``latentlens analyze`` unless the analysis of these ``samples`` is already there."""
    state_path = root / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    from latentlens.results import has_analysis

    if has_analysis(run_dir) and state.get("analysed_samples") == samples:
        print(
            f"demo: the analysis of {samples} samples is already in {run_dir / 'analysis'}; skipping it.",
            file=sys.stderr,
        )
        return {"analysed": True, "seconds": 0.0, "skipped": True}
    command = _analysis_command()
    if command is None:
        print(
            "demo: this latentlens has no `analyze` command; the dashboard will show the recording only.",
            file=sys.stderr,
        )
        return {"analysed": False, "seconds": 0.0, "skipped": False}
    from latentlens.cli import build_parser

    print(f"demo: analysing {run_dir} …", file=sys.stderr)
    started = time.perf_counter()
    import contextlib

    # the colour edits only: they are what the editor offers first, and validating every pair of every
    # attribute (130 directions) would take the demo from minutes to a quarter of an hour on a CPU
    parsed = build_parser().parse_args(["analyze", str(run_dir), "--validate-only", "edit/color/*"])
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is kept for the demo's own --json document
            status = int(parsed._run(parsed) or 0)
    except LatentlensError as error:
        # The recording stays useful (runs, latents, attention pages); say why the analysis is missing.
        print(
            f"demo: warning: the analysis failed: {error} The dashboard shows the recording only; "
            f"rerun with a larger --limit to analyse it.",
            file=sys.stderr,
        )
        return {
            "analysed": False,
            "seconds": round(time.perf_counter() - started, 2),
            "skipped": False,
            "error": str(error),
        }
    if status != 0:
        raise LatentlensError(f"`latentlens analyze {run_dir}` failed (exit status {status}); see the messages above.")
    state["analysed_samples"] = samples
    state_path.write_text(json.dumps(state))
    return {"analysed": True, "seconds": round(time.perf_counter() - started, 2), "skipped": False}


def run(args: argparse.Namespace) -> int:
    from latentlens.cli.commands.dashboard import check_port, serve

    if args.limit is None or args.limit < 1:
        raise ConfigError(f"--limit must be a positive number of prompts, got {args.limit!r}.")
    check_port(args.port)
    root = Path(args.out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    run_dir = root / RUN_NAME
    started = time.perf_counter()
    recorded = record_step(args, run_dir)
    analysed = analyse_step(run_dir, root, recorded["samples"])
    summary = {
        "root": str(root),
        "run": str(run_dir),
        "record": recorded,
        "analysis": analysed,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if args.json:
        from latentlens.cli import print_json

        print_json(summary)
        return 0
    if args.no_serve:
        print(f"demo: done in {summary['seconds']} s; serve it with `latentlens dashboard {root}`.", file=sys.stderr)
        return 0
    serve(root, args.host, args.port, cache_dir=str(root / ".dashboard-cache"), open_browser=not args.no_browser)
    return 0
