"""A small run recorded with the real bundled toy model, for the browser tests' screenshots.

``python -m tests.browser.toy_run OUT_DIR`` records the first prompts of ``probes/shapes.yaml``
with :func:`latentlens.record_prompts` (few denoising steps) and analyses them with
``latentlens analyze``; the browser tests run it once per session in a child process, so the test
process itself never runs torch kernels before the editor's background callbacks fork.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

PROMPTS = 48
STEPS = 8  # denoising steps of the recording
RECORDED = (0, 2, 5, 7)  # of which these are stored


def record_toy_run(out: Path, prompts: int = PROMPTS) -> Path:
    """Record ``prompts`` shapes prompts into ``out`` and analyse them; returns ``out``."""
    import torch

    import latentlens
    from latentlens.cli import main as cli_main

    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[2]
    spec = latentlens.load_probe_spec(root / "probes" / "shapes.yaml")
    pipe = latentlens.load_pipeline("toy")
    started = time.perf_counter()
    latentlens.record_prompts(
        pipe, spec.prompts(), out, sites="blocks.*.resid_out.*", attention="blocks.*.attn.img2txt", steps=list(RECORDED),
        num_inference_steps=STEPS, dtype=torch.float16, batch_size=16, limit=prompts, model_id="toy", progress=False,
    )
    recorded = time.perf_counter() - started
    status = cli_main(["analyze", str(out), "--threads", "1", "--umap", "none", "--validate", "4"])  # UMAP would add ~11 s
    if status != 0:
        raise SystemExit(f"latentlens analyze {out} failed with status {status}")
    status = cli_main(["patch-grid", "--model", "toy", "--attribute", "color", "--from", "red", "--to", "blue",
                       "--n", "2", "--sites", "blocks.*.resid_out.*", "--steps", *map(str, RECORDED), "all",
                       "--inference-steps", str(STEPS), "--keep-images", "2", "--out", str(out)])
    if status != 0:
        raise SystemExit(f"latentlens patch-grid --out {out} failed with status {status}")
    print(f"toy run: recorded {prompts} prompts in {recorded:.1f} s, analysed in {time.perf_counter() - started - recorded:.1f} s",
          file=sys.stderr)
    return out


if __name__ == "__main__":
    record_toy_run(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else PROMPTS)
