"""``latentlens edit``: edit an image with EMS (Extract → Manipulate → Sample).

Example::

    $ latentlens edit --model toy --image red.png --target "a small blue circle on the left on a gray background" --out blue.png
    $ latentlens edit --model toy --image red.png --direction red_to_blue --alpha 1.5 --out blue.png --json
    $ latentlens edit --model toy --batch edits.jsonl --json

``--batch FILE.jsonl``: one JSON object per line, ``{"image", "target", "source"?, "alpha"?,
"direction"?, "mode"?, "out"}``. The model is loaded once; a bad line is reported with its line
number and the other lines are still edited (exit status 1 if any line failed). Every output
image is written to a temporary file and renamed, so a failure never leaves a partial file.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from latentlens.errors import ConfigError, LatentlensError

NAME = "edit"
HELP = "Edit an image towards a target description or along a direction with EMS (text + image space)."

_BATCH_KEYS = {"image", "target", "source", "alpha", "degree", "direction", "mode", "out"}  # degree: old name of alpha


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from latentlens.cli.options import MODEL_HELP, add_device_options

    parser.add_argument("--model", default="toy", help=MODEL_HELP)
    add_device_options(parser)
    parser.add_argument("--image", help="The image to edit (PNG/JPEG; centre-cropped and resized to the model's size).")
    parser.add_argument("--target", help="What the edited image should show.")
    parser.add_argument("--source", help="What the image shows now (default: the describer's description).")
    parser.add_argument(
        "--alpha",
        "--degree",
        dest="alpha",
        type=float,
        default=None,
        help="Editing degree alpha, as in steer (default 1; 0 = no edit). --degree is its deprecated old name.",
    )
    parser.add_argument("--direction", help="A saved Direction (NAME or NAME.json) to edit along instead of --target.")
    parser.add_argument(
        "--mode",
        choices=("both", "text", "image"),
        default="both",
        help="both = EMS (default); text / image = the single-space ablations.",
    )
    parser.add_argument("--out", help="Output image path (.png/.jpg).")
    parser.add_argument("--batch", metavar="FILE.jsonl", help="Edit many images: one JSON object per line.")
    ems = parser.add_argument_group("EMS parameters")
    ems.add_argument("--iterations", type=int, default=None, help="Image-space updates K.")
    ems.add_argument("--step-size", type=float, default=None, help="Step size eta in (0, 1].")
    ems.add_argument("--rho", type=float, default=None, help="Bound on the RMS latent change (negative = none).")
    ems.add_argument(
        "--t-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="Noise levels sigma drawn per update.",
    )
    ems.add_argument(
        "--mask",
        choices=("diff", "attention", "none"),
        default=None,
        help="Where the change may happen: diff = where the target and source predictions differ "
        "(default), attention = the edited words' attention, none = everywhere.",
    )
    ems.add_argument("--mask-threshold", type=float, default=None, help="Mask threshold (fraction of the max).")
    ems.add_argument("--seed", type=int, default=0, help="Seed of the noise draws (default 0).")
    from latentlens.cli.options import add_denoising_steps

    add_denoising_steps(ems, help="Denoising (ODE) steps for text mode (default: the model's).")
    ems.add_argument("--guidance", type=float, default=None, help="Classifier-free guidance (default: the model's).")
    desc = parser.add_argument_group("describer (when --source is not given)")
    desc.add_argument(
        "--describer",
        choices=("shapes", "endpoint", "transformers"),
        default=None,
        help="shapes = the shapes-world captioner (default for the toy model).",
    )
    desc.add_argument(
        "--describer-config",
        metavar="FILE.json",
        help='Endpoint settings: {"url", "model", "timeout"?, "retries"?, "api_key"?}.',
    )
    desc.add_argument("--describer-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    desc.add_argument("--describer-model", help="Endpoint model name, or the local model folder for 'transformers'.")
    desc.add_argument("--describer-timeout", type=float, default=30.0, help="Seconds per endpoint request.")
    desc.add_argument("--describer-retries", type=int, default=2, help="Extra attempts after a failed request.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is fastest for the toy model on a busy CPU).",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON document on stdout.")


def _describer(args: argparse.Namespace) -> Any:
    if args.describer is None:
        return None
    if args.describer == "shapes":
        return "shapes"
    if args.describer == "transformers":
        if not args.describer_model:
            raise ConfigError("--describer transformers needs --describer-model PATH (a local model folder).")
        return {"transformers": args.describer_model}
    config: dict[str, Any] = {}
    if args.describer_config:
        path = Path(args.describer_config)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"The describer config {path} cannot be read as JSON ({error}).") from error
        if not isinstance(config, dict):
            raise ConfigError(f"The describer config {path} must hold a JSON object.")
    if args.describer_url:
        config["url"] = args.describer_url
    if args.describer_model:
        config["model"] = args.describer_model
    config.setdefault("timeout", args.describer_timeout)
    config.setdefault("retries", args.describer_retries)
    return {"endpoint": config}


def _editor(args: argparse.Namespace) -> Any:
    from latentlens.cli.options import model_dtype, resolve_device
    from latentlens.editor import EMSEditor
    from latentlens.models import load_pipeline

    params: dict[str, Any] = {"seed": args.seed}
    if args.mask is not None:
        params["mask"] = args.mask
    if args.iterations is not None:
        params["iterations"] = args.iterations
    if args.step_size is not None:
        params["step_size"] = args.step_size
    if args.rho is not None:
        params["rho"] = None if args.rho < 0 else args.rho
    if args.t_range is not None:
        params["t_range"] = tuple(args.t_range)
    if args.mask_threshold is not None:
        params["mask_threshold"] = args.mask_threshold
    device = resolve_device(args.device)  # validate before loading the model
    describer = _describer(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    print(f"latentlens edit: loading {args.model} ...", file=sys.stderr)
    pipe = load_pipeline(args.model, device=device, torch_dtype=model_dtype(args.model_dtype))
    return EMSEditor(
        pipe,
        mode=args.mode,
        describer=describer,
        guidance_scale=args.guidance,
        num_inference_steps=args.steps,
        **params,
    )


MIN_SIDE = 8
_STOPWORDS = {"a", "an", "the", "on", "in", "at", "of", "with", "and", "over", "to", "is", "image", "photo"}


def check_edit_inputs(image: Any, out: Any, alpha: Any, direction: Any) -> None:
    """Refuse, before any model work: a missing or tiny image, an unwritable output, a bad alpha or direction."""
    import math

    from PIL import Image, UnidentifiedImageError

    path = Path(str(image))
    try:
        with Image.open(path) as opened:
            width, height = opened.size
    except FileNotFoundError:
        raise ConfigError(f"--image {path} does not exist; give a PNG or JPEG file.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"--image {path} cannot be decoded as an image ({error}); give a PNG or JPEG file.") from None
    if min(width, height) < MIN_SIDE:
        raise ConfigError(
            f"--image {path} is {width}x{height} pixels; an edit needs at least {MIN_SIDE} pixels a side "
            "(the model's latent grid would be empty)."
        )
    target = Path(str(out))
    if target.exists() and target.is_dir():
        raise ConfigError(f"--out {target} is a folder; give an image file path such as {target / 'edit.png'}.")
    if not target.parent.exists() and not target.parent.parent.exists():
        raise ConfigError(
            f"The folder {target.parent.parent} does not exist, so {target} cannot be written; create it first "
            "or choose another --out (latentlens creates at most the output's own folder)."
        )
    if alpha is not None and not math.isfinite(float(alpha)):
        raise ConfigError(f"--alpha must be a finite number, got {alpha}.")
    if direction:
        from latentlens.direction import Direction

        Direction.load(direction)  # a bad path or file fails now, not after the model load


def unrelated_target_warning(source: str | None, target: str | None) -> str | None:
    """A warning when ``target`` shares no content word with ``source`` (probably not an edit of it)."""
    import re

    if not source or not target:
        return None
    words = lambda text: {w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOPWORDS}
    if words(source) and words(target) and not words(source) & words(target):
        return (
            f"the target {target!r} shares no word with the source {source!r}; EMS edits an image toward a "
            "*changed* description of it, so an unrelated target mostly gives noise. Describe the image as "
            "it should look (e.g. the source with one attribute changed)."
        )
    return None


def _one(editor: Any, item: dict[str, Any]) -> dict[str, Any]:
    from latentlens.editor.images import save_image

    out = item.get("out")
    if not out:
        raise ConfigError('No output path: give --out (or "out" in a --batch line).')
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise ConfigError(f"Output {out} must end in .png, .jpg, .jpeg, .webp or .bmp.")
    if not item.get("image"):
        raise ConfigError('No input image: give --image (or "image" in a --batch line).')
    direction = item.get("direction")
    if direction:
        from latentlens.direction import Direction

        direction = Direction.load(direction)
    target = item.get("target")
    if not direction and (target is None or not str(target).strip()):
        raise ConfigError("The target is empty; give --target TEXT (what the edited image should show) or --direction.")
    alpha = item.get("alpha", item.get("degree"))  # "degree": the deprecated name
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
        raise ConfigError(f"alpha must be a number, got {alpha!r}.")
    check_edit_inputs(item["image"], out, alpha, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = editor.edit(
            item["image"],
            target if not direction else None,
            source=item.get("source"),
            alpha=alpha,
            direction=direction or None,
            mode=item.get("mode"),
        )
    messages = [str(w.message) for w in caught]
    unrelated = None if direction else unrelated_target_warning(getattr(result, "source", None), target)
    if unrelated:
        messages.append(unrelated)
    for text in messages:
        print(f"latentlens edit: warning: {text}", file=sys.stderr)
    save_image(result.image, out)
    doc = {"image": str(item["image"]), "out": str(out), **result.to_dict()}
    doc["warnings"] = messages
    return doc


def _read_batch(path: Path) -> list[tuple[int, Any]]:
    if not path.is_file():
        raise ConfigError(f"The batch file {path} does not exist; give a JSON-lines file (one edit per line).")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"The batch file {path} cannot be read as UTF-8 text ({error}).") from error
    items: list[tuple[int, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except ValueError as error:
            items.append((number, ConfigError(f"line {number} is not valid JSON ({error}).")))
    if not items:
        raise ConfigError(f"The batch file {path} holds no edits; write one JSON object per line.")
    return items


def run(args: argparse.Namespace) -> int:
    from latentlens.cli import print_json

    if args.batch:
        if args.image or args.out or args.target:
            raise ConfigError("--batch takes every edit from the file; do not combine it with --image/--target/--out.")
        items = _read_batch(Path(args.batch))
        editor = _editor(args)
        done: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for number, item in items:
            try:
                if isinstance(item, Exception):
                    raise item
                if not isinstance(item, dict):
                    raise ConfigError(f"line {number} must be a JSON object, got {type(item).__name__}.")
                unknown = sorted(set(item) - _BATCH_KEYS)
                if unknown:
                    raise ConfigError(f"unknown key(s) {unknown}; valid keys are {sorted(_BATCH_KEYS)}.")
                doc = _one(editor, item)
                doc["line"] = number
                done.append(doc)
                print(f"latentlens edit: line {number}: wrote {doc['out']}", file=sys.stderr)
            except LatentlensError as error:
                message = str(error)
                failed.append({"line": number, "error": message})
                print(f"latentlens edit: line {number}: error: {message}", file=sys.stderr)
        if args.json:
            print_json({"edits": done, "failed": failed})
        return 1 if failed else 0

    if not args.image or not args.out:
        raise ConfigError("Give --image IMG and --out OUT (or --batch FILE.jsonl).")
    if args.direction is None and (args.target is None or not args.target.strip()):
        raise ConfigError("The target is empty; give --target TEXT (what the edited image should show) or --direction.")
    check_edit_inputs(args.image, args.out, args.alpha, args.direction)  # before the model loads
    editor = _editor(args)
    doc = _one(
        editor,
        {
            "image": args.image,
            "target": args.target,
            "source": args.source,
            "alpha": args.alpha,
            "direction": args.direction,
            "out": args.out,
        },
    )
    if args.json:
        print_json(doc)
    else:
        print(
            f"latentlens edit: wrote {doc['out']} ({doc['seconds']:.2f} s; source: {doc['source']!r})", file=sys.stderr
        )
    return 0
