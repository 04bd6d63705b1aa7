"""Reading one tensor site during a call: CFG rows, text-token selection and capture-time reductions.

Example::

    x, dims = select_site(spec, value, rows=slice(1, 2), text_index=None, reduce=Reduce("mean_img_tokens"))
"""

from __future__ import annotations

import torch

from latentlens.adapters.base import SiteSpec
from latentlens.capture.options import Reduce


def select_site(
    spec: SiteSpec,
    x: torch.Tensor,
    rows: slice | None,
    text_index: torch.Tensor | None,
    reduce: Reduce,
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The kept part of a site's value ``x`` (first axis batch) and its axis names.

    ``rows`` are the batch rows of the kept CFG branch; ``text_index`` (``[token]`` or ``[batch, token]``)
    selects text tokens of text-stream sites; ``reduce.mean_img_tokens`` averages image tokens.
    """
    x = x.detach()[rows]
    dims = spec.dims
    if spec.stream == "txt" and text_index is not None and dims[1] == "token":
        ti = text_index.to(x.device)
        x = x.index_select(1, ti) if ti.ndim == 1 else x.gather(1, ti[:, :, None].expand(-1, -1, x.shape[-1]))
    if reduce.mean_img_tokens and spec.stream == "img":
        if dims[1:] == ("token", "channel"):
            x, dims = x.mean(dim=1), ("batch", "channel")
        elif dims[1:] == ("channel", "height", "width"):
            x, dims = x.mean(dim=(2, 3)), ("batch", "channel")
    return x, dims


__all__ = ["select_site"]
