"""``latentlens segment``: generate an image and one binary mask per concept from attention maps.

Writes ``OUT/image.png`` and ``OUT/masks/{concept}.png`` (white = the concept), both at the image's
resolution. Default pooling: the mean over the later half of the joint blocks and every denoising
step (``--blocks`` / ``--steps`` choose others; ``--blocks all``: every block). Default rule
``refine``: each concept's Otsu mask of its pooled map seeds a 2-means clustering of the image tokens'
features at ``--feature-block`` (default: the block a third of the way through) at the last step, cut
at half coverage; ``--rule half``/``otsu``/``argmax`` use the maps alone (see
``latentlens.analysis.segment``).

Example::

    $ latentlens segment --model toy --prompt "a large red circle in the center on a gray background" \\
        --concepts circle,background --seed 0 --out seg --json
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from latentlens.errors import ConfigError

NAME = "segment"
HELP = "Generate an image and a binary mask per concept word from attention maps (OUT/image.png, OUT/masks/)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from latentlens.cli.options import MODEL_HELP, add_device_options

    parser.add_argument("--model", default="toy", help=MODEL_HELP)
    add_device_options(parser)
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="The prompt to generate.")
    parser.add_argument("--concepts", required=True, help="Comma-separated concept words, e.g. circle,background.")
    parser.add_argument("--seed", type=int, default=0, help="Generator seed (default 0).")
    parser.add_argument(
        "--method",
        choices=("img2txt", "concept", "concept_attn"),
        default="concept_attn",
        help="img2txt: the concepts' prompt tokens; concept: ConceptAttention output-space maps; "
        "concept_attn (default): concept attention weights.",
    )
    parser.add_argument(
        "--blocks",
        default=None,
        help="Blocks to pool, e.g. 2,3, or 'all' (default: the later half of the joint blocks).",
    )
    parser.add_argument("--steps", default=None, help="Recorded steps to pool, e.g. 0,1,2 (default: all).")
    parser.add_argument(
        "--rule",
        choices=("refine", "half", "otsu", "argmax"),
        default="refine",
        help="refine (default): Otsu masks refined by clustering the image tokens' features, cut at half "
        "coverage; half: each map above the midpoint of its median and maximum; otsu: each map above its "
        "Otsu threshold; argmax: the largest map wins.",
    )
    parser.add_argument(
        "--feature-block",
        type=int,
        default=None,
        help="--rule refine: the block whose image-stream features are clustered (default: a third of the way).",
    )
    parser.add_argument("--num-steps", type=int, default=None, help="Denoising steps (default: the model's).")
    parser.add_argument("--out", required=True, help="Output folder (created if missing).")
    parser.add_argument("--json", action="store_true", help="Print a JSON summary on stdout.")


def _ints(text: str | None, flag: str) -> list[int] | str | None:
    if text is None or text == "all":
        return text
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as error:
        raise ConfigError(f"{flag} {text!r} must be comma-separated integers, e.g. 0,2,3.") from error


def mask_file_name(concept: str) -> str:
    """A safe file name for a concept's mask (``"red circle"`` → ``red_circle.png``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", concept).strip("_") + ".png"


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from latentlens import check_concepts, load_pipeline, segment
    from latentlens.cli import print_json
    from latentlens.cli.commands.generate import check_output_dir
    from latentlens.cli.options import model_dtype, resolve_device

    concepts = check_concepts([c for c in args.concepts.split(",")])
    names = [mask_file_name(c) for c in concepts]
    if len(set(names)) != len(names) or any(n == ".png" for n in names):
        raise ConfigError(f"--concepts {args.concepts!r} give clashing or empty mask file names; use plain words.")
    blocks, steps = _ints(args.blocks, "--blocks"), _ints(args.steps, "--steps")
    if args.feature_block is not None and args.rule != "refine":
        raise ConfigError(f"--feature-block is used only by --rule refine, not --rule {args.rule}.")
    if args.num_steps is not None and args.num_steps < 1:
        raise ConfigError(f"--num-steps must be at least 1, got {args.num_steps}.")
    device = resolve_device(args.device)
    out = Path(args.out)
    check_output_dir(out)
    pipe = load_pipeline(args.model, device=device, torch_dtype=model_dtype(args.model_dtype))
    result = segment(
        pipe,
        args.prompt,
        concepts,
        seed=args.seed,
        method=args.method,
        blocks=blocks,
        steps=steps,
        num_inference_steps=args.num_steps,
        rule=args.rule,
        feature_block=args.feature_block,
    )
    Image.fromarray(result.image).save(out / "image.png")
    (out / "masks").mkdir(exist_ok=True)
    files = {}
    for concept, name in zip(concepts, names):
        path = out / "masks" / name
        Image.fromarray(result.masks[concept].astype("uint8") * 255).save(path)
        files[concept] = str(path)
    if args.json:
        print_json(
            {
                "image": str(out / "image.png"),
                "masks": files,
                "method": result.method,
                "blocks": result.blocks,
                "steps": result.steps,
                "rule": args.rule,
                "feature_block": result.feature_block,
                "size": list(result.image.shape[:2]),
                "area": {c: float(result.masks[c].mean()) for c in concepts},
            }
        )
    return 0
