"""Measures shared by the analysis and the editor: cosine matrix of directions, SDE and PSNR.

SDE is defined in ``docs/design.md`` ("Disentanglement metric").

Example::

    from latentlens.metrics import cosine_matrix, psnr, sde
    names, C = cosine_matrix({"color": d_color, "size": d_size})   # C [2, 2], 1 on the diagonal
    sde(recon_x, recon_flip, mask)          # {'effectiveness': ..., 'leakage': ..., 'sde': ...}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from latentlens.errors import ConfigError


def _vector(value: Any) -> np.ndarray:
    if hasattr(value, "vector"):
        value = value.vector
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64).reshape(-1)


def cosine_matrix(directions: Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    """Pairwise cosine similarity of directions (vectors, tensors or :class:`~latentlens.Direction`).

    Returns ``(names, matrix [direction, direction])``. All directions must have the same width; a zero vector
    gives NaN in its row and column.
    """
    if not directions:
        raise ConfigError("cosine_matrix needs at least one direction.")
    names = list(directions)
    vectors = [_vector(directions[n]) for n in names]
    widths = {len(v) for v in vectors}
    if len(widths) != 1:
        detail = ", ".join(f"{n}: {len(v)}" for n, v in zip(names, vectors))
        raise ConfigError(f"cosine_matrix needs directions of one width; got {detail}. Compare directions of one site.")
    V = np.stack(vectors)  # [direction, channel]
    norms = np.linalg.norm(V, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = V / norms[:, None]
    unit[norms == 0] = np.nan
    matrix = np.clip(unit @ unit.T, -1.0, 1.0)
    return names, matrix


def sde(
    reconstruction: Any,  # [..., height, width, channel] or [..., channel, height, width]; x reconstructed under p_x
    flipped: Any,  # same shape; x reconstructed under p_flip from the same noise
    mask: Any,  # bool [..., height, width]: the attribute's region M
    *,
    channels_last: bool | None = None,
) -> dict[str, float]:
    """SDE (``docs/design.md``, "Disentanglement metric") from two reconstructions and the region mask.

    ``D`` = per-pixel squared difference (summed over colour channels); effectiveness = mean of
    ``D`` inside ``M``, leakage = mean outside; ``SDE = eff / (eff + leak)`` (NaN when both are 0:
    an edit that changed nothing has no SDE). Batches are pooled: means run over every pixel of
    every image.
    """
    a = np.asarray(
        reconstruction.detach().cpu() if hasattr(reconstruction, "detach") else reconstruction, dtype=np.float64
    )
    b = np.asarray(flipped.detach().cpu() if hasattr(flipped, "detach") else flipped, dtype=np.float64)
    m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask).astype(bool)
    if a.shape != b.shape:
        raise ConfigError(f"The two reconstructions differ in shape: {a.shape} vs {b.shape}.")
    if channels_last is None:
        channels_last = a.shape[-1] in (1, 3, 4) and a.shape[-3] not in (1, 3, 4)
    D = ((a - b) ** 2).sum(axis=-1 if channels_last else -3)  # [..., height, width]
    if D.shape[-2:] != m.shape[-2:]:
        raise ConfigError(f"The mask has spatial shape {m.shape[-2:]} but the images have {D.shape[-2:]}.")
    m = np.broadcast_to(m, D.shape)
    inside, outside = int(m.sum()), int((~m).sum())
    if inside == 0 or outside == 0:
        raise ConfigError("The mask must mark some pixels inside and some outside the attribute's region.")
    eff = float(D[m].mean())
    leak = float(D[~m].mean())
    total = eff + leak
    return {
        "effectiveness": eff,
        "leakage": leak,
        "sde": eff / total if total > 0 else math.nan,
        "pixels_inside": inside,
        "pixels_outside": outside,
    }


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of two uint8 images ``[height, width, 3]`` over the pixels in ``where`` (all when None).

    100 when identical; NaN when ``where`` selects no pixel.
    """
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2  # [height, width, 3]
    if where is not None:
        if not where.any():
            return float("nan")
        diff = diff[where]
    mse = float(diff.mean())
    return 100.0 if mse == 0 else min(100.0, 10 * math.log10(255.0**2 / mse))


__all__ = ["cosine_matrix", "psnr", "sde"]
