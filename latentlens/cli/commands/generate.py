"""``latentlens generate``: text-to-image with any pipeline (default: the bundled toy model).

Image ``i`` is written to ``OUT/{i:04d}.png`` and uses seed ``N + i`` (one generator per image,
so an image does not depend on which other prompts share its batch).

Example::

    $ latentlens generate --model toy --prompt "a small red circle on the left on a gray background" --seed 0 --out imgs
    $ latentlens generate --prompts prompts.txt --seed 100 --num-inference-steps 20 --guidance 4 --out imgs --json
    $ latentlens generate --model path/to/flux-dev --model-dtype bfloat16 --device cuda:1 --prompt "a fox" --seed 0 --out f
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from latentlens.errors import ConfigError, StoreError

NAME = "generate"
HELP = "Generate images from text prompts (image i -> OUT/{i:04d}.png with seed N+i)."

_BATCH = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from latentlens.cli.options import MODEL_HELP, add_device_options

    parser.add_argument("--model", default="toy", help=MODEL_HELP)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", nargs="+", metavar="TEXT", help="One or more prompts.")
    source.add_argument("--prompts", metavar="FILE", help="A text file with one prompt per line (blank lines skipped).")
    parser.add_argument("--seed", type=int, required=True, help="Seed of image 0; image i uses seed+i.")
    from latentlens.cli.options import add_denoising_steps

    add_denoising_steps(parser, help="Denoising steps (default: the model's default).")
    parser.add_argument(
        "--guidance", type=float, default=None, help="Classifier-free guidance scale (default: the model's default)."
    )
    parser.add_argument("--out", required=True, help="Output folder (created if missing).")
    parser.add_argument("--json", action="store_true", help="Print a JSON summary on stdout.")
    add_device_options(parser)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        prompts = list(args.prompt)
    else:
        path = Path(args.prompts)
        if not path.is_file():
            raise ConfigError(f"The prompts file {path} does not exist; give a text file with one prompt per line.")
        from latentlens.textfile import read_text

        prompts = [line.strip() for line in read_text(path, what="The prompts file").splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"The prompts file {path} holds no prompts; write one prompt per line.")
    from latentlens.textfile import check_prompt

    for i, prompt in enumerate(prompts):
        check_prompt(prompt, where=f"Prompt {i}")
    return prompts


def check_output_dir(out: Path) -> bool:
    """Create ``out`` if needed and make sure files can be written there (before any model work).

    Only ``out`` itself is created (its parent must exist). Returns whether it was created here.
    """
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file, but a folder is needed; give a folder path.")
    created = not out.exists()
    if created and not out.parent.is_dir():
        raise StoreError(
            f"The folder {out.parent} does not exist, so --out {out} cannot be created; create it first or "
            "choose another --out (latentlens creates only the output folder itself)."
        )
    try:
        out.mkdir(exist_ok=True)
    except OSError as error:
        raise StoreError(f"Cannot create the output folder {out} ({error.strerror}); choose another --out.") from error
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".latentlens-write-test-"):
            pass
    except OSError as error:
        raise StoreError(
            f"Cannot write into the output folder {out} ({error.strerror}); choose another --out."
        ) from error
    return created


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only an empty folder goes: one this command created and wrote nothing into
    except OSError:
        pass


def run(args: argparse.Namespace) -> int:
    prompts = _read_prompts(args)
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--num-inference-steps must be at least 1, got {args.steps}.")
    from latentlens.cli.options import resolve_device

    device = resolve_device(args.device)  # before the output folder is made or the model loads
    out = Path(args.out)
    created = check_output_dir(out)
    try:
        return _generate(args, prompts, out, device)
    except BaseException:
        if created:
            _remove_if_empty(out)
        raise


def _generate(args: argparse.Namespace, prompts: list[str], out: Path, device: str) -> int:
    import torch

    from latentlens.cli import print_json
    from latentlens.cli.options import model_dtype
    from latentlens.models import is_toy_model, load_pipeline

    warnings: dict[str, list[str]] = {}
    toy = is_toy_model(args.model)
    if toy:
        from latentlens.shapes import names_second_object_first, unknown_words

        for prompt in prompts:
            unknown = unknown_words(prompt)
            if unknown:
                warnings[prompt] = unknown
                print(
                    f"latentlens generate: warning: words unknown to the shapes world in {prompt!r}: "
                    f"{', '.join(unknown)} (the image is still generated; the toy model never saw these words).",
                    file=sys.stderr,
                )
            if names_second_object_first(prompt):
                print(
                    f"latentlens generate: warning: {prompt!r} names the right or bottom object first; the toy "
                    "models were trained with the left/top object named first and bind attributes by word order, "
                    "so expect the two objects' attributes swapped (name the left/top object first).",
                    file=sys.stderr,
                )

    start = time.time()
    pipe = load_pipeline(args.model, device=device, torch_dtype=model_dtype(args.model_dtype))
    call_kwargs = {}
    if args.steps is not None:
        call_kwargs["num_inference_steps"] = args.steps
    if args.guidance is not None:
        call_kwargs["guidance_scale"] = args.guidance
    if toy:
        from latentlens.toy.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS

        call_kwargs.setdefault("num_inference_steps", DEFAULT_NUM_INFERENCE_STEPS)
        call_kwargs.setdefault("guidance_scale", DEFAULT_GUIDANCE_SCALE)

    paths: list[str] = []
    for begin in range(0, len(prompts), _BATCH):
        batch = prompts[begin : begin + _BATCH]
        generators = [torch.Generator().manual_seed(args.seed + begin + j) for j in range(len(batch))]
        images = pipe(batch, generator=generators, output_type="pil", **call_kwargs).images
        for j, image in enumerate(images):
            path = out / f"{begin + j:04d}.png"
            image.save(path)
            paths.append(str(path))
        print(f"latentlens generate: {len(paths)}/{len(prompts)} images written to {out}", file=sys.stderr)
    seconds = time.time() - start

    if args.json:
        print_json(
            {
                "images": paths,
                "prompts": prompts,
                "seeds": [args.seed + i for i in range(len(prompts))],
                "model": args.model,
                "steps": call_kwargs.get("num_inference_steps"),
                "guidance": call_kwargs.get("guidance_scale"),
                "unknown_words": warnings,
                "seconds": round(seconds, 2),
            }
        )
    return 0
