"""Cost of the per-sample CRC-32 checksums the store journals (issue 14: at most 3 % of record time).

Records the same prompts through the toy model into fresh run folders, with the checksum
computed as shipped, and times the time spent inside the checksum (every call of the
store's CRC function is timed) against the whole recording. A second pass with the
checksum replaced by a constant gives the end-to-end ratio (noisier on a shared machine).
Also times ``RunStore.verify()`` (sizes + checksums: a full read-back) against recording.

Usage::

    python benchmarks/bench_checksum.py --prompts 32 --threads 1 --repeats 3

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    import latentlens.store as store_module
    from latentlens.models import load_pipeline
    from latentlens.runs import record_prompts
    from latentlens.shapes import captions  # noqa: F401 - imported for its prompt templates

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sites", default="blocks.*.resid_out.*")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    colors = ("red", "green", "blue", "yellow", "purple", "orange")
    prompts = [
        f"a small {colors[i % 6]} circle on the left on a gray background"
        for i in range(args.prompts)
    ]

    real_crc = store_module._crc32
    spent = [0.0]

    def timed_crc(sample):
        t0 = time.perf_counter()
        value = real_crc(sample)
        spent[0] += time.perf_counter() - t0
        return value

    def record(crc) -> tuple[float, float, Path]:
        folder = Path(tempfile.mkdtemp(prefix="ll-bench-crc-"))
        store_module._crc32 = crc
        spent[0] = 0.0
        try:
            t0 = time.perf_counter()
            record_prompts(
                pipe,
                prompts,
                folder / "run",
                sites=args.sites,
                batch_size=4,
                progress=False,
                save_images=False,
            )
            return time.perf_counter() - t0, spent[0], folder
        finally:
            store_module._crc32 = real_crc

    record(timed_crc)  # warm-up
    with_crc, crc_time, without_crc, verify_time, data_bytes = [], [], [], [], 0
    for _ in range(args.repeats):
        seconds, inside, folder = record(timed_crc)
        with_crc.append(seconds)
        crc_time.append(inside)
        run = store_module.open_run(folder / "run")
        data_bytes = sum(
            os.path.getsize(p)
            for p in (folder / "run" / "arrays").rglob("*")
            if p.is_file()
        )
        t0 = time.perf_counter()
        assert run.verify().ok
        verify_time.append(time.perf_counter() - t0)
        shutil.rmtree(folder)
        seconds, _, folder = record(lambda sample: 0)
        without_crc.append(seconds)
        shutil.rmtree(folder)
    median = statistics.median
    doc = {
        "prompts": args.prompts,
        "sites": args.sites,
        "threads": args.threads,
        "repeats": args.repeats,
        "data_mib": round(data_bytes / 2**20, 1),
        "record_s": [round(s, 3) for s in with_crc],
        "crc_s": [round(s, 4) for s in crc_time],
        "record_without_crc_s": [round(s, 3) for s in without_crc],
        "verify_s": [round(s, 3) for s in verify_time],
        "crc_share_of_record": round(median(crc_time) / median(with_crc), 4),
        "end_to_end_ratio": round(median(with_crc) / median(without_crc), 4),
        "verify_over_record": round(median(verify_time) / median(with_crc), 4),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
