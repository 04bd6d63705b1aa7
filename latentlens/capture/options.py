"""The options of a recording, validated once before any hook is installed.

Example::

    Reduce(["mean_img_tokens", "pool=2"]).as_dict()
    # {'mean_img_tokens': True, 'mean_steps': False, 'pool': 2}
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeAlias, get_args
from collections.abc import Mapping, Sequence

import torch

from latentlens.errors import ConfigError

#: the classifier-free-guidance branch a recording keeps
CfgBranch = Literal["cond", "uncond", "both"]
#: head-averaged maps or one per head
Heads = Literal["mean", "all"]
#: what ``reduce=`` accepts: a name, ``"pool=N"``, or a list / dict of them
ReduceSpec: TypeAlias = str | Sequence[str] | Mapping[str, Any] | None


def check_cfg(cfg: str) -> CfgBranch:
    """``cfg`` if it is a valid branch, else a :class:`ConfigError` naming the choices."""
    if cfg not in get_args(CfgBranch):
        raise ConfigError(f"cfg={cfg!r} is not one of 'cond', 'uncond', 'both'.")
    return cfg  # type: ignore[return-value]


def check_heads(heads: str) -> Heads:
    """``heads`` if it is ``"mean"`` or ``"all"``, else a :class:`ConfigError`."""
    if heads not in get_args(Heads):
        raise ConfigError(f"heads={heads!r} must be 'mean' (head average) or 'all' (per head).")
    return heads  # type: ignore[return-value]


class Reduce:
    """Capture-time reductions: ``mean_img_tokens``, ``mean_steps``, ``pool=N`` (maps)."""

    def __init__(self, reduce: ReduceSpec) -> None:
        self.mean_img_tokens = False
        self.mean_steps = False
        self.pool = 1
        if reduce is None:
            return
        items: list[Any]
        if isinstance(reduce, dict):
            items = [f"pool={v}" if k == "pool" else k for k, v in reduce.items() if v]
        elif isinstance(reduce, str):
            items = [reduce]
        else:
            items = list(reduce)
        for item in items:
            m = re.fullmatch(r"pool\s*[=:]?\s*(\d+)", str(item))
            if item == "mean_img_tokens":
                self.mean_img_tokens = True
            elif item == "mean_steps":
                self.mean_steps = True
            elif m:
                self.pool = int(m.group(1))
                if self.pool < 1:
                    raise ConfigError(f"reduce pool={self.pool} must be >= 1.")
            else:
                raise ConfigError(
                    f"reduce={item!r} is not understood; use 'mean_img_tokens', 'mean_steps', 'pool=N' "
                    "(spatial pooling of maps) or a list/dict of them."
                )

    def as_dict(self) -> dict[str, Any]:
        return {"mean_img_tokens": self.mean_img_tokens, "mean_steps": self.mean_steps, "pool": self.pool}


def pool_map(m: torch.Tensor, grid: tuple[int, int], k: int, pool_q: bool, pool_k: bool) -> torch.Tensor:
    """Average-pool the image axes of a map ``[..., query, key]`` over ``k × k`` patches of the token grid."""
    h, w = grid
    if h % k or w % k:
        raise ConfigError(f"reduce pool={k} does not divide the image token grid {h}×{w}; pick a divisor.")
    f = torch.nn.functional

    def pool_axis(x: torch.Tensor, axis: int) -> torch.Tensor:
        x = x.movedim(axis, -1)
        lead = x.shape[:-1]
        x = x.reshape(-1, 1, h, w)
        x = f.avg_pool2d(x, k)
        return x.reshape(*lead, (h // k) * (w // k)).movedim(-1, axis)

    if pool_q:
        m = pool_axis(m, -2)
    if pool_k:
        m = pool_axis(m, -1)
    return m


__all__ = ["CfgBranch", "Heads", "Reduce", "ReduceSpec", "check_cfg", "check_heads", "pool_map"]
