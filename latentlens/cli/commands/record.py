"""``latentlens record``: record latents and attention maps of many prompts into a run folder.

Example::

    $ latentlens record --model toy --prompts prompts.txt --out runs/colors \\
          --sites 'blocks.*.resid_out.*' --attention img2txt --steps 0:20:5 --json
    $ latentlens record --model toy --probe probes/shapes.yaml --out runs/shapes --resume
    $ latentlens record --model toy --probe probes/shapes.yaml --out runs/shapes --ray local --workers 2
    $ latentlens record --model path/to/sd3-medium --prompts prompts.txt --out runs/sd3 \
          --model-dtype bfloat16 --attention img2txt --dry-run   # on the GPU when there is one (--device)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from latentlens.cli.options import DTYPES
from latentlens.errors import ConfigError

NAME = "record"
HELP = "Record text/image token latents and attention maps of many prompts into a resumable run folder."

_SPEC_KEYS = {
    "sites",
    "attention",
    "steps",
    "num_inference_steps",
    "guidance_scale",
    "guidance",
    "height",
    "width",
    "batch_size",
    "cfg",
    "dtype",
    "tokens",
    "reduce",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from latentlens.cli.options import MODEL_HELP, add_device_options

    parser.add_argument(
        "--model",
        help=MODEL_HELP + " Default: the probe spec's model.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prompts",
        metavar="FILE",
        help="one prompt per line (# comments allowed), or JSONL "
        "with a 'prompt' field and optional 'seed' and label fields.",
    )
    source.add_argument(
        "--probe", metavar="SPEC.yaml", help="a probe spec (see probes/*.yaml): prompts, seeds, labels."
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder to create (or resume).")
    parser.add_argument(
        "--sites",
        action="append",
        metavar="GLOB",
        help="site names or globs, comma-separated or repeated (default: 'blocks.*.resid_out.*').",
    )
    parser.add_argument(
        "--attention",
        action="append",
        metavar="SPEC",
        help="attention maps to record, e.g. img2txt or 'blocks.*.attn.img2txt' (default: none).",
    )
    parser.add_argument(
        "--steps", metavar="STEPS", help="denoising steps to record: 'all' (default), '0,5,9', '0:10', '0:20:5', '-1'."
    )
    parser.add_argument("--limit", type=int, metavar="N", help="record only the first N prompts.")
    parser.add_argument(
        "--batch-size", type=int, default=None, metavar="B", help="prompts per pipeline call (default 4)."
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="prompt i uses seed S+i unless the prompt file gives one (default 0).",
    )
    parser.add_argument(
        "--num-inference-steps", type=int, metavar="N", help="denoising steps (default: the pipeline's)."
    )
    parser.add_argument(
        "--guidance", type=float, metavar="G", help="classifier-free guidance scale (default: the pipeline's)."
    )
    parser.add_argument("--height", type=int, metavar="PX", help="image height (default: the pipeline's).")
    parser.add_argument("--width", type=int, metavar="PX", help="image width (default: the pipeline's).")
    parser.add_argument(
        "--cfg",
        choices=("cond", "uncond", "both"),
        default=None,
        help="which classifier-free-guidance branch to record (default cond).",
    )
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="dtype of the recorded data (default float32).")
    parser.add_argument("--no-images", action="store_true", help="do not save the generated images.")
    parser.add_argument("--resume", action="store_true", help="continue a run in --out made with the same settings.")
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --out.")
    parser.add_argument(
        "--repair",
        action="store_true",
        help="with --resume (implied): check every finished "
        "sample (chunk sizes and checksums) and record exactly the damaged ones again.",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="record on a Ray cluster: 'local' (the default when no ADDRESS is given) starts one "
        "on this machine, 'auto' or HOST:PORT joins one started with `ray start --head` "
        "(needs latentlens[ray]).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="with --ray: pipelines to run, one per GPU (or per CPU on a cluster without GPUs); default: all of them.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar.")
    parser.add_argument("--json", action="store_true", help="print one JSON document with the result.")
    parser.add_argument(
        "--reduce",
        action="append",
        metavar="R",
        help="capture-time reductions: mean_img_tokens, mean_steps, pool=N (maps); comma-separated or repeated.",
    )
    add_device_options(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="load only the configs and print what the run would "
        "write (bytes per sample and site, total, free disk); compute nothing.",
    )


# ------------------------------------------------------------------ parsing


def parse_steps(text: str | None, flag: str = "--steps") -> list[Any] | None:
    """Parse ``--steps``: ``None``/'all' → every step; else a list of ints and ``slice`` objects.

    ``flag`` names where the text came from in the error (a probe spec's ``record.steps``).
    """
    if text is None or text.strip().lower() in ("", "all"):
        return None
    parts: list[Any] = []
    for raw in text.split(","):
        part = raw.strip()
        try:
            if ":" in part:
                fields = [int(f) if f.strip() else None for f in part.split(":")]
                if len(fields) > 3 or (len(fields) == 3 and fields[2] is not None and fields[2] <= 0):
                    raise ValueError
                parts.append(slice(*fields))
            else:
                parts.append(int(part))
        except ValueError:
            raise ConfigError(
                f"{flag} {text!r}: {part!r} is not a step index or range; use e.g. '0,5,9', '0:10', '0:20:5' or 'all'."
            ) from None
    return parts


def spec_steps(value: Any, where: str) -> list[Any] | None:
    """A probe spec's ``record.steps`` (``all``, ``'0:20:5'``, an int or a list of ints) as :func:`parse_steps`
    gives it; a ConfigError naming ``where`` for anything else."""
    if value is None or isinstance(value, str):
        return parse_steps(value, flag=where)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise ConfigError(
        f"{where} {value!r} is not understood; give 'all', a list of step indices like [0, 5, 9] or a range "
        "like '0:20:5'."
    )


def resolve_steps(parts: list[Any] | None, num_steps: int | None, flag: str = "--steps") -> list[int] | None:
    """Turn parsed ``--steps`` into sorted step indices in ``0..num_steps-1`` (an error names a bad one)."""
    if parts is None:
        return None
    if num_steps is None:
        if any(isinstance(p, slice) or p < 0 for p in parts):
            raise ConfigError(f"{flag} with ranges or negative indices needs --num-inference-steps.")
        return sorted(set(parts))
    out: set[int] = set()
    for part in parts:
        if isinstance(part, slice):
            start, stop = part.start, part.stop
            for bound in (start, stop):
                if bound is not None and not -num_steps <= bound <= num_steps:
                    raise ConfigError(
                        f"{flag} range {_fmt(part)} reaches step {bound}, outside 0..{num_steps - 1} "
                        f"(the run has {num_steps} denoising steps); use steps below {num_steps} or raise "
                        "--num-inference-steps."
                    )
            chosen = range(num_steps)[part]
            if not chosen:
                raise ConfigError(f"{flag} range {_fmt(part)} selects no step of 0..{num_steps - 1}.")
            out.update(chosen)
        else:
            if not -num_steps <= part < num_steps:
                raise ConfigError(
                    f"{flag} {part} is outside 0..{num_steps - 1} (the run has {num_steps} denoising steps); "
                    f"use a step below {num_steps}, a negative index from the end, or raise --num-inference-steps."
                )
            out.add(part % num_steps)
    return sorted(out)


def _fmt(part: slice) -> str:
    fields = [part.start, part.stop] + ([part.step] if part.step is not None else [])
    return ":".join("" if f is None else str(f) for f in fields)


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return out or None


_QUADRANTS = ("img2txt", "txt2img", "img2img", "txt2txt")


def expand_attention(values: list[str] | None) -> list[str] | None:
    """``img2txt`` → ``blocks.*.attn.img2txt`` (a bare quadrant means: in every block)."""
    if values is None:
        return None
    return [f"blocks.*.attn.{v}" if v in _QUADRANTS else v for v in values]


def read_prompt_file(path: str | Path) -> list[Any]:
    """Prompts of a ``--prompts`` file: plain lines, or JSONL objects with ``prompt`` (+ ``seed``, labels)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompts {path}: no such file; give a text file with one prompt per line.")
    items: list[Any] = []
    from latentlens.textfile import read_text

    for number, line in enumerate(read_text(path, what="--prompts").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("{"):
            try:
                entry = json.loads(text)
            except ValueError as error:
                raise ConfigError(
                    f"{path}:{number}: invalid JSON ({error}); fix the line or write the prompt as plain text."
                ) from None
            if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
                raise ConfigError(f"{path}:{number}: a JSONL entry needs a string 'prompt' field.")
            items.append(entry)
        else:
            items.append(text)
    if not items:
        raise ConfigError(f"--prompts {path} holds no prompts; write one prompt per line.")
    return items


def _check_sites(pipe: Any, patterns: list[str] | None, flag: str) -> None:
    """Fail before any compute if a site pattern matches no recordable name (closest names suggested)."""
    if not patterns:
        return
    import fnmatch

    import difflib

    from latentlens.recorder import site_names

    names = list(site_names(pipe))

    for pattern in patterns:
        if not fnmatch.filter(names, pattern) and pattern not in names:
            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid names look like {names[0]!r}."
            raise ConfigError(
                f"{flag} {pattern!r} matches no site of this model{hint} (`latentlens sites --model MODEL` lists them)."
            )


_FLAGS = {
    "batch_size": "--batch-size",
    "num_inference_steps": "--num-inference-steps",
    "height": "--height",
    "width": "--width",
    "guidance_scale": "--guidance",
    "cfg": "--cfg",
    "reduce": "--reduce",
}


def check_options(options: dict[str, Any], source: Any = _FLAGS.get) -> None:
    """The recording options that need no model, checked before one loads: positive whole numbers,
    a finite guidance scale, a CFG branch, the reductions. ``source(key)`` names where a value came from."""
    import math

    from latentlens.capture.options import Reduce, check_cfg

    for key in ("batch_size", "num_inference_steps", "height", "width"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{source(key)} must be a positive integer, got {value!r}.")
    scale = options.get("guidance_scale")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
    ):
        raise ConfigError(f"{source('guidance_scale')} must be a finite number, got {scale!r}.")
    try:
        if options.get("cfg") is not None:
            check_cfg(options["cfg"])
        Reduce(options.get("reduce"))
    except ConfigError as error:
        key = "cfg" if options.get("cfg") is not None and "cfg=" in str(error) else "reduce"
        raise ConfigError(f"{source(key)}: {error}") from None


def _num_steps_before_load(model: str, options: dict[str, Any]) -> int | None:
    """The run's denoising steps without loading the model: the option, else the pipeline class's default
    (None when the configs cannot tell; the steps are then checked once the model is loaded)."""
    if options.get("num_inference_steps"):
        return int(options["num_inference_steps"])
    from latentlens.errors import LatentlensError
    from latentlens.size_plan import pipeline_defaults

    try:
        return int(pipeline_defaults(model)["num_inference_steps"])
    except LatentlensError:
        raise
    except Exception:
        return None


def _load_model(model: str, device: str | None, torch_dtype: Any) -> Any:
    from latentlens.models import load_pipeline

    return load_pipeline(model, device=device, torch_dtype=torch_dtype)


def _worker_pipeline(args: argparse.Namespace, model: str, torch_dtype: Any) -> dict[str, Any]:
    """With --ray and --model-dtype: each worker loads the model in that dtype (else by name, in float32)."""
    if args.ray is None or torch_dtype is None:
        return {}
    import functools

    from latentlens.models import load_pipeline

    return {"worker_pipeline": functools.partial(load_pipeline, model, torch_dtype=torch_dtype)}


_DRY_RUN_DONE = object()


def _plan_before_load(args: argparse.Namespace, model: str, prompts: Any, options: dict[str, Any]) -> Any:
    """The size plan (configs only): printed with --dry-run; a run that does not fit its disk is refused."""
    from latentlens.errors import LatentlensError, UnknownNameError
    from latentlens.runs import prompt_set
    from latentlens.size_plan import available_host_bytes, config_transformer, plan_record, reductions, refusal

    count = len(prompt_set(prompts, args.seed))
    if args.limit is not None:
        count = min(count, args.limit)
    if args.resume and (Path(args.out) / "manifest.json").exists():
        from latentlens.store import open_run

        count = max(0, count - len(open_run(args.out).completed))
    try:
        for key in ("sites", "attention"):  # unknown names fail here, before the model loads
            value = options.get(key)
            if value is not None:
                _check_sites(config_transformer(model), [value] if isinstance(value, str) else list(value), f"--{key}")
        base = {
            "samples": count,
            "out": args.out,
            "steps": options.get("steps"),  # resolved by run() before the plan
            "save_images": not args.no_images,
            "batch_size": options.get("batch_size", 4),
            **{
                k: options.get(k)
                for k in (
                    "sites",
                    "attention",
                    "tokens",
                    "reduce",
                    "dtype",
                    "height",
                    "width",
                    "num_inference_steps",
                    "guidance_scale",
                )
            },
            "cfg": options.get("cfg") or "cond",
        }
        plan = plan_record(model, **base)
    except UnknownNameError as error:  # found by the plan before the model loads: name the options
        raise ConfigError(f"--sites/--attention: {error}") from None
    except LatentlensError:
        raise
    except Exception as error:
        if args.dry_run:
            raise ConfigError(
                f"The size of this recording cannot be planned from the configs of {model!r} "
                f"({type(error).__name__}: {error})."
            ) from error
        print(
            f"latentlens record: note: no size plan ({type(error).__name__}: {error}); recording anyway.",
            file=sys.stderr,
        )
        return None
    if args.dry_run:
        if args.json:
            from latentlens.cli import print_json

            print_json(plan.to_json())
        else:
            from latentlens.size_plan import human

            print(plan.summary())
            for name, size in plan.biggest(len(plan.sites)):
                print(f"  {name:40s} {human(size)} per sample")
        return _DRY_RUN_DONE
    if not plan.fits:
        raise refusal(plan, reductions(model, base, plan))
    warning = None if args.ray is not None else plan.host_memory_warning(available_host_bytes())
    if warning:  # the workers of a Ray run have their own memory
        print(f"latentlens record: warning: {warning}", file=sys.stderr)
    return plan


def run(args: argparse.Namespace) -> int:
    from latentlens.runs import DEFAULT_SITES, RunInterruptedError, check_out_dir, record_prompts

    steps_parts = parse_steps(args.steps)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive integer, got {args.limit}.")
    if (args.resume or args.repair) and args.overwrite:
        raise ConfigError("--resume/--repair and --overwrite exclude each other; pick one.")
    args.resume = args.resume or args.repair
    if args.workers is not None and args.ray is None:
        raise ConfigError("--workers needs --ray (e.g. --ray local --workers 2); without it the run uses one process.")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {args.workers}.")
    if args.ray is not None and str(args.device).strip().lower() != "auto":
        raise ConfigError(
            f"--device {args.device!r} does not apply with --ray: each worker takes one GPU where the cluster has "
            "GPUs, else one CPU; drop --device."
        )
    from latentlens.cli.options import model_dtype, resolve_device

    device = None if args.ray is not None else resolve_device(args.device)  # the driver keeps the CPU with --ray
    weights_dtype = model_dtype(args.model_dtype)

    options: dict[str, Any] = {}
    model = args.model
    if args.probe:
        from latentlens.analysis.spec import load_probe_spec

        spec = load_probe_spec(args.probe)
        prompts: Any = spec.prompts()
        unknown = sorted(set(spec.record) - _SPEC_KEYS)
        if unknown:
            raise ConfigError(
                f"{args.probe}: record option {unknown[0]!r} is unknown; use some of {', '.join(sorted(_SPEC_KEYS))}."
            )
        options = dict(spec.record)
        if "guidance" in options:
            options["guidance_scale"] = options.pop("guidance")
        model = model or spec.model
    else:
        prompts = read_prompt_file(args.prompts)
    if not model:
        raise ConfigError("--model is required (the probe spec names no model); e.g. --model toy.")
    check_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)  # before loading the model

    cli = {
        "sites": _split(args.sites),
        "attention": expand_attention(_split(args.attention)),
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance,
        "height": args.height,
        "width": args.width,
        "batch_size": args.batch_size,
        "cfg": args.cfg,
        "dtype": args.dtype,
        "reduce": _split(args.reduce),
    }
    options.update({k: v for k, v in cli.items() if v is not None})
    if "sites" not in options and "attention" not in options:
        options["sites"] = DEFAULT_SITES
    options.setdefault("batch_size", 4)
    steps_flag = "--steps"
    spec_given = options.pop("steps", None) if args.probe else None
    if steps_parts is None and spec_given is not None:  # --steps wins over the spec's record.steps
        steps_flag = f"{args.probe}: record.steps"
        steps_parts = spec_steps(spec_given, steps_flag)
    check_options(options, lambda key: _FLAGS[key] if cli.get(key) is not None else f"{args.probe}: record.{key}")
    num_steps = _num_steps_before_load(model, options)
    if steps_parts is not None and num_steps is not None:  # checked here, before any model loads
        options["steps"] = resolve_steps(steps_parts, num_steps, steps_flag)
    if isinstance(options.get("dtype"), str):
        import torch

        if options["dtype"] not in DTYPES:
            raise ConfigError(f"dtype {options['dtype']!r} is not one of {', '.join(DTYPES)}.")
        options["dtype"] = getattr(torch, options["dtype"])

    if args.ray is not None:  # an unreachable cluster or a missing extra fails before the model loads
        from latentlens.distributed import connect

        connect(args.ray)
    plan_steps = _plan_before_load(args, model, prompts, options)
    if plan_steps is _DRY_RUN_DONE:
        return 0

    pipe = _load_model(model, device, weights_dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    from latentlens.runs import default_num_inference_steps

    if steps_parts is not None and "steps" not in options:  # the configs did not say how many steps
        num_steps = options.get("num_inference_steps") or default_num_inference_steps(pipe)
        options["steps"] = resolve_steps(steps_parts, num_steps, steps_flag)
    for key in ("sites", "attention"):
        value = options.get(key)
        if value is not None:
            _check_sites(pipe, [value] if isinstance(value, str) else list(value), f"--{key}")

    try:
        result = record_prompts(
            pipe,
            prompts,
            args.out,
            seeds=args.seed,
            model_id=model,
            save_images=not args.no_images,
            resume=args.resume,
            overwrite=args.overwrite,
            limit=args.limit,
            progress=not args.quiet,
            repair=args.repair,
            ray=args.ray,
            workers=args.workers,
            **_worker_pipeline(args, model, weights_dtype),
            **options,
        )
    except RunInterruptedError as error:
        print(f"latentlens record: error: {error}", file=sys.stderr)
        return 1
    document = result.to_json()
    if args.json:
        from latentlens.cli import print_json

        print_json(document)
    else:
        print(
            f"{document['run']}: {document['samples']} samples complete ({document['recorded_now']} recorded now, "
            f"{document['resumed_from']} before), {len(document['recorded'])} arrays, {document['seconds']:.1f} s",
            file=sys.stderr,
        )
    return 0


__all__ = [
    "NAME",
    "HELP",
    "add_arguments",
    "run",
    "parse_steps",
    "spec_steps",
    "resolve_steps",
    "check_options",
    "read_prompt_file",
]
