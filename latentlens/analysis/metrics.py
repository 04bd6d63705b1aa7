"""The shared measures, at their analysis path: see :mod:`latentlens.metrics`.

Example::

    from latentlens.analysis.metrics import cosine_matrix, sde
"""

from __future__ import annotations

from latentlens.metrics import cosine_matrix, psnr, sde

__all__ = ["cosine_matrix", "psnr", "sde"]
