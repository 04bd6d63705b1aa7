"""Take each attention row's log-sum-exp from the model's own fused SDPA call (fast exact maps; docs/design.md, "Capture").

While a recorded attention module runs, :class:`LSECapture` (a ``TorchFunctionMode``) intercepts
``torch.nn.functional.scaled_dot_product_attention``. When the call is one the fused kernels serve
(no mask, no dropout, not causal, no GQA, 4-D ``[batch, head, token, channel]``, no autograd), it asks
the dispatcher which backend it would pick and calls that very kernel directly, keeping its row
log-sum-exp (natural log) next to the output:

- CPU: ``aten._scaled_dot_product_flash_attention_for_cpu`` (float32, bfloat16);
- CUDA flash: ``aten._scaled_dot_product_flash_attention`` (float16/bfloat16; LSE ``[batch, head, query]``);
- CUDA memory-efficient: ``aten._scaled_dot_product_efficient_attention(compute_log_sumexp=True)``
  (LSE padded to a multiple of 32 along the query axis: sliced);
- CUDA cuDNN: ``aten._scaled_dot_product_cudnn_attention`` (LSE ``[batch, head, query, 1]`` from torch 2.9).

The first call of each (device, dtype, backend) is verified: the kernel's output must be identical
to what SDPA itself returns and its LSE must match a float32 reference over a block of rows; else
(or if the kernel raises, or a private op is missing) that combination falls back, with a one-line
:class:`~latentlens.compat.CompatNotice`, to recomputing the normaliser. The returned output is
always SDPA's own. diffusers backends that are not SDPA (flash-attn, sage) hand their LSE to the capture
in flight through :mod:`latentlens.attention_backends`. Usage (the recorder does this)::

    cap = LSECapture()
    with cap:
        out = attn(hidden_states, encoder_hidden_states)
    cap.result  # LSEResult(lse=[batch, head, query], scale=..., nk=...) or None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import torch
import torch.nn.functional as F

from latentlens import compat

_SDPA = F.scaled_dot_product_attention
_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_VERIFY_ROWS = 64

_Mode: Any = compat.TORCH_FUNCTION_MODE.value or object

#: ``(device, dtype, backend name) -> True`` (verified) or ``False`` (falls back); filled on first use
VERIFIED: dict[tuple[str, str, str], bool] = {}


@dataclass
class LSEResult:
    """Row log-sum-exp of one SDPA call: ``lse`` ``[batch, head, query]`` (float32), effective ``scale``."""

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


def _plain_call(a: dict[str, Any]) -> bool:
    """A call the fused kernels can serve with their log-sum-exp: tensors, no mask/dropout/causal/GQA."""
    q, k, v = a.get("query"), a.get("key"), a.get("value")
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        return False
    if a.get("attn_mask") is not None or a.get("dropout_p", 0.0) != 0.0 or a.get("is_causal", False):
        return False
    if a.get("enable_gqa", False):
        return False
    if any(t.ndim != 4 or t.requires_grad or type(t) is not torch.Tensor for t in (q, k, v)):
        return False
    return q.dtype == k.dtype == v.dtype and q.device == k.device == v.device


def _kernel(a: dict[str, Any]) -> tuple[tuple[str, str, str], Callable[..., tuple]] | None:
    """The fused kernel SDPA would run for this call, with its verification key, or None."""
    if not _plain_call(a):
        return None
    q, k, v = a["query"], a["key"], a["value"]
    if q.device.type == "cpu" and q.dtype not in (torch.float32, torch.bfloat16):
        return None
    backend = compat.sdp_choice(q, k, v, a.get("scale"))
    entry = compat.SDPA_KERNELS.get((q.device.type, backend)) if backend is not None else None
    if entry is None:
        return None
    shim, runner = entry
    if q.device.type == "cuda" and backend == compat.FLASH_BACKEND and q.shape[-1] % 8:
        return None  # SDPA pads the head dim for this kernel; the direct call would differ
    key = (str(q.device), str(q.dtype).replace("torch.", ""), compat.BACKEND_NAMES.get(backend, str(backend)))
    if VERIFIED.get(key) is False:
        return None
    if shim.get(f"fast attention maps on {key[0]} ({key[2]})") is None:
        VERIFIED[key] = False
        return None
    return key, runner


def lse_matches(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, scale: float) -> bool:
    """The kernel's LSE of the first rows against a float32 ``logsumexp(q kᵀ · scale)`` reference.

    ``q``, ``k``: ``[batch, head, token, channel]``; ``lse``: ``[batch, head, query]``.
    """
    rows = min(q.shape[2], _VERIFY_ROWS)
    ref = torch.logsumexp(torch.matmul(q[:, :, :rows].float(), k.float().transpose(-1, -2)) * scale, dim=-1)
    atol = 1e-4 if q.dtype in (torch.float32, torch.float64) else 4e-3
    return bool(torch.allclose(lse[:, :, :rows].float(), ref, atol=atol, rtol=1e-4))


def first_call_problem(
    out: Any, expected: Any, lse: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float, own: str
) -> str | None:
    """Why a kernel's first answer cannot be trusted (None: it can): its output must equal ``expected``, the
    caller's own result (``own`` names it), bit for bit, and its LSE a float32 reference (:func:`lse_matches`).

    ``q``, ``k``: ``[batch, head, token, channel]``; ``lse``: ``[batch, head, query]``.
    """
    if not (
        isinstance(out, torch.Tensor)
        and isinstance(expected, torch.Tensor)
        and out.shape == expected.shape
        and torch.equal(out, expected)
    ):
        return f"returned an output that differs from {own}"
    try:
        matches = lse_matches(q, k, lse, scale)
    except RuntimeError as error:  # shapes or memory: never raise inside the pipeline call
        return f"could not be checked against a float32 reference ({error})"
    return None if matches else "returned a log-sum-exp that does not match a float32 reference"


def fall_back(key: tuple[str, str, str], why: str) -> None:
    """Mark (device, dtype, kernel) ``key`` as falling back, and say why in one notice."""
    VERIFIED[key] = False
    compat.notice(
        f"lse:{key}",
        f"the {key[2]} attention kernel on {key[0]} ({key[1]}) {why}; attention maps "
        "there recompute the softmax normaliser (exact, slower).",
    )


class LSECapture(_Mode):
    """Records the log-sum-exp of the single eligible attention call made while active.

    ``attention_calls`` counts the SDPA calls and the diffusers attention backend calls
    (:mod:`latentlens.attention_backends`) seen; ``result`` is None if there was no eligible call or
    more than one attention call (ambiguous).
    ``fast_calls`` counts the calls served by a fused kernel directly, ``verifications`` the
    (device, dtype, backend) checks run (class-wide, for tests).
    """

    fast_calls = 0
    verifications = 0

    def __init__(self) -> None:
        super().__init__()
        self.result: LSEResult | None = None
        self.attention_calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not _SDPA:
            return func(*args, **kwargs)
        self.attention_calls += 1
        self.result = None
        a = _bind(args, kwargs)
        chosen = _kernel(a) if self.attention_calls == 1 and a is not None else None
        if chosen is None or a is None:
            return func(*args, **kwargs)
        key, runner = chosen
        q, k = a["query"], a["key"]
        scale = a.get("scale")
        eff = float(scale) if scale is not None else q.shape[-1] ** -0.5
        try:
            out, raw = runner(q, k, a["value"], scale)
        except Exception as error:  # an op whose behaviour changed: never raise inside the pipeline call
            fall_back(key, f"raised {type(error).__name__}: {error}")
            return func(*args, **kwargs)
        lse = compat.normalise_lse(raw, q.shape[2])
        if not VERIFIED.get(key):
            LSECapture.verifications += 1
            expected = func(*args, **kwargs)
            if lse is None:
                fall_back(key, f"returned a log-sum-exp of shape {tuple(raw.shape)}")
                return expected
            problem = first_call_problem(out, expected, lse, q, k, eff, "SDPA's own")
            if problem is not None:
                fall_back(key, problem)
                return expected
            VERIFIED[key] = True
            out = expected
        elif lse is None:
            fall_back(key, f"returned a log-sum-exp of shape {tuple(raw.shape)}")
            return out
        self.result = LSEResult(lse.detach(), eff, k.shape[-2])  # [batch, head, query]
        LSECapture.fast_calls += 1
        return out
