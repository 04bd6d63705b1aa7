"""The bundled toy models trained on the shapes world: the MM-DiT ``toy`` (a small ``SD3Transformer2DModel``)
and, once trained (``latentlens train-toy --arch pixart|unet --install``), ``toy-pixart`` and ``toy-unet``.

Example::

    import latentlens
    pipe = latentlens.load_pipeline("toy")
    image = pipe("a small red circle on the left on a gray background").images[0]
"""

from __future__ import annotations

from latentlens.toy.architectures import ARCHITECTURES

#: the bundled MM-DiT's weights folder (the others: ``ARCHITECTURES[arch].weights_dir``)
WEIGHTS_DIR = ARCHITECTURES["mmdit"].weights_dir

__all__ = ["WEIGHTS_DIR", "ToyPipeline"]


def __getattr__(name: str):
    if name == "ToyPipeline":
        from latentlens.toy.pipeline import ToyPipeline

        return ToyPipeline
    raise AttributeError(f"module 'latentlens.toy' has no attribute {name!r}")
