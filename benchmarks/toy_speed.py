"""Speed of the toy model: 16 images at the default settings (issue 3: ≤ 10 s on the 2-core CPU).

Usage::

    python benchmarks/toy_speed.py                 # default threads (torch's choice)
    python benchmarks/toy_speed.py --threads 1 --repeats 5 --json-out /tmp/speed.json

Prints one JSON document: seconds per run (all repeats), median, images/s, threads, settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from latentlens.models import load_pipeline
    from latentlens.toy.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    prompts = ["a small red circle on the left on a gray background"] * args.images
    pipe(prompts[:2], num_inference_steps=2, output_type="np")  # warm-up
    times = []
    for repeat in range(args.repeats):
        generators = [torch.Generator().manual_seed(repeat * 1000 + i) for i in range(args.images)]
        start = time.perf_counter()
        pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators, output_type="np")
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    report = {
        "images": args.images,
        "steps": args.steps,
        "guidance": args.guidance,
        "threads": torch.get_num_threads(),
        "seconds": [round(t, 3) for t in times],
        "median_seconds": round(median, 3),
        "images_per_second": round(args.images / median, 2),
        "target_seconds": 10.0,
        "meets_target": median <= 10.0,
    }
    document = json.dumps(report, indent=2)
    print(document)
    if args.json_out:
        with open(args.json_out, "w") as handle:
            handle.write(document + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
