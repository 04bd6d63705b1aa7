"""The bundled toy MM-DiT: a small ``SD3Transformer2DModel`` trained on the shapes world.

Example::

    import latentlens
    pipe = latentlens.load_pipeline("toy")
    image = pipe("a small red circle on the left on a gray background").images[0]
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

__all__ = ["WEIGHTS_DIR", "ToyPipeline"]


def __getattr__(name: str):
    if name == "ToyPipeline":
        from latentlens.toy.pipeline import ToyPipeline

        return ToyPipeline
    raise AttributeError(f"module 'latentlens.toy' has no attribute {name!r}")
