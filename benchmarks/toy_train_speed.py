"""Seconds per training step of each toy architecture at its planned size (the v2 recipe, batch 32).

One step = render the batch (shapes world v2 mix), the rectified-flow loss, backward, clipping, AdamW
and the EMA update, exactly as :func:`latentlens.toy.train.train_toy` does it; the caption bank is
replaced by 32 real MiniLM captions encoded once (the bank only changes which rows are looked up).

Usage::

    python benchmarks/toy_train_speed.py --threads 1 --steps 5          # every architecture
    python benchmarks/toy_train_speed.py --arch unet --device cuda --steps 50
    python benchmarks/toy_train_speed.py --arch unet --size unet_attention_levels=1   # a size to try

Prints one JSON document: per architecture its parameters, s/step (median of the timed steps), the
planned budget's total (steps × s/step) and the settings; report it next to ``uptime``'s load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from latentlens.shapes import make_caption, render, training_combinations
    from latentlens.toy.architectures import ARCHITECTURES, parameter_count, text_mask
    from latentlens.toy.text_encoder import add_text_positions, encode_texts, load_text_encoder
    from latentlens.toy.train import TrainConfig, flow_matching_loss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", choices=list(ARCHITECTURES), default=list(ARCHITECTURES))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per architecture (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a TrainConfig size field (a JSON value), e.g. unet_attention_levels=1 or "
        "unet_block_out_channels=[32,64,160]; repeatable.",
    )
    args = parser.parse_args(argv)
    sizes = {}
    for item in args.size:
        field, _, value = item.partition("=")
        if not value:
            parser.error(f"--size {item!r} needs FIELD=VALUE, e.g. unet_attention_levels=1.")
        try:
            sizes[field] = json.loads(value)
        except ValueError:
            parser.error(f"--size {item!r}: {value!r} is not a JSON value (numbers, [lists], null).")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    tokenizer, encoder = load_text_encoder()
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    for arch in args.arch:
        config = TrainConfig.for_world("v2", arch=arch, **sizes)
        combos = training_combinations()
        picks = [combos[int(i)] for i in rng.integers(len(combos), size=config.batch_size)]
        tokens, pooled = encode_texts([make_caption(a).text for a in picks], tokenizer, encoder)
        torch.manual_seed(0)
        model = config.build_denoiser().to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.99))
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        generator = torch.Generator().manual_seed(0)
        times = []
        for step in range(args.steps + 1):
            start = time.perf_counter()
            images = np.stack([render(a, canvas=config.canvas, rng=rng).image for a in picks])
            x0 = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(device)
            mask = text_mask(tokens).to(device) if arch == "pixart" else None
            t = add_text_positions(tokens, config.text_position_scale).to(device)
            loss = flow_matching_loss(model, x0, t, pooled.to(device), generator, arch=arch, mask=mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            with torch.no_grad():
                for name, value in model.state_dict().items():
                    ema[name].mul_(0.999).add_(value.detach(), alpha=0.001)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - start)
        per_step = statistics.median(times)
        results[arch] = {
            "model": ARCHITECTURES[arch].model_name,
            "parameters": parameter_count(model),
            "s_per_step": round(per_step, 4),
            "budget_steps": config.steps,
            "batch_size": config.batch_size,
            "budget_hours": round(per_step * config.steps / 3600, 2),
        }
        print(f"{arch}: {per_step:.3f} s/step", file=sys.stderr)
    document = {
        "results": results,
        "threads": args.threads,
        "device": str(device),
        "load_average": os.getloadavg(),
        "timed_steps": args.steps,
        "sizes": sizes,
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
