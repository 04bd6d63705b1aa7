"""Take each attention row's log-sum-exp from the model's own SDPA call (docs/design.md, "Capture": the fast path).

While a recorded attention module runs, :class:`LSECapture` (a ``TorchFunctionMode``) intercepts
``torch.nn.functional.scaled_dot_product_attention``. When the dispatcher would pick the CPU flash
kernel anyway (CPU tensors, no mask, no dropout, not causal, no GQA, 4-D ``[batch, heads, tokens, d]``,
no autograd), it calls that kernel directly — the output is the very tensor SDPA would have
returned — and keeps its row log-sum-exp. Any other call runs unchanged and the maps fall back to
recomputing the normaliser. Usage (the recorder does this)::

    cap = LSECapture()
    with cap:
        out = attn(hidden_states, encoder_hidden_states)
    cap.result  # LSEResult(lse=[batch, heads, tokens], scale=...) or None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SDPA = F.scaled_dot_product_attention
_FLASH = int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)
_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_DTYPES = (torch.float32, torch.bfloat16)


@dataclass
class LSEResult:
    """Row log-sum-exp of one SDPA call: ``lse`` ``[batch, heads, nq]`` (float32), effective ``scale``."""

    lse: torch.Tensor
    scale: float
    nk: int


def _bind(args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """SDPA's arguments by name (None if the call has unexpected arguments)."""
    if len(args) > len(_PARAMS) or any(k not in _PARAMS for k in kwargs):
        return None
    bound = dict(zip(_PARAMS, args))
    if any(k in bound for k in kwargs):
        return None
    bound.update(kwargs)
    return bound


def _eligible(a: dict[str, Any]) -> bool:
    q, k, v = a.get("query"), a.get("key"), a.get("value")
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return False
    if a.get("attn_mask") is not None or a.get("dropout_p", 0.0) != 0.0 or a.get("is_causal", False):
        return False
    if a.get("enable_gqa", False):
        return False
    if any(t.device.type != "cpu" or t.ndim != 4 or t.dtype not in _DTYPES or t.requires_grad for t in (q, k, v)):
        return False
    if q.dtype != k.dtype or q.dtype != v.dtype or type(q) is not torch.Tensor:
        return False
    # only when the dispatcher itself would run the flash kernel: then its output is SDPA's output, bit for bit
    return int(torch._fused_sdp_choice(q, k, v, None, 0.0, False, scale=a.get("scale"))) == _FLASH


class LSECapture(TorchFunctionMode):
    """Records the log-sum-exp of the single eligible SDPA call made while active.

    ``result`` is None if there was no eligible call or more than one SDPA call (ambiguous).
    ``fast_calls`` counts the calls served by the flash kernel (for tests).
    """

    fast_calls = 0  # class-wide counter

    def __init__(self) -> None:
        super().__init__()
        self.result: LSEResult | None = None
        self.sdpa_calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not _SDPA:
            return func(*args, **kwargs)
        self.sdpa_calls += 1
        a = _bind(args, kwargs)
        if self.sdpa_calls > 1 or a is None or not _eligible(a):
            self.result = None
            return func(*args, **kwargs)
        q = a["query"]
        scale = a.get("scale")
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, a["key"], a["value"], dropout_p=0.0, is_causal=False, attn_mask=None, scale=scale
        )
        eff = float(scale) if scale is not None else q.shape[-1] ** -0.5
        self.result = LSEResult(lse.detach(), eff, a["key"].shape[-2])  # [batch, heads, nq]
        LSECapture.fast_calls += 1
        return out
