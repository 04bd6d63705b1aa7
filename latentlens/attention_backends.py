"""Take each attention row's log-sum-exp from diffusers' attention backends that are not torch SDPA.

Flux (and every model whose processor calls diffusers' ``dispatch_attention_fn``) can run its attention
on flash-attn 2 (``flash``), flash-attn 3 (``_flash_3``), SageAttention, hub kernels or flex. Those
never call torch's ``scaled_dot_product_attention``, so :class:`~latentlens.attention_lse.LSECapture`
does not see them. While a recording with maps is open, :func:`serve_backends` wraps every registered
backend that takes ``return_lse`` (except torch's own ``native`` / ``_native_*``, which the SDPA mode
serves): inside a recorded attention module, an eligible call (no mask, dropout, causal, GQA or
context parallelism) asks the backend for its log-sum-exp and hands it to the capture in flight.

The first call of each (device, dtype, backend) is verified as for SDPA kernels: the output must be
identical to the backend's own plain call and the LSE must match a float32 reference; otherwise (or if
the backend raises or returns something else) that combination falls back, with one notice, to
recomputing the normaliser. Usage (what map capture does when it installs its hooks)::

    serve_backends(hooks)  # undone by hooks.remove()
"""

from __future__ import annotations

import functools
import threading
from typing import Any
from collections.abc import Callable

import torch

from latentlens import attention_lse, compat
from latentlens.adapters.hooks import HookSet
from latentlens.attention_lse import LSECapture, LSEResult, fall_back, first_call_problem

#: ``{AttentionBackendName: original function}`` while wrapped; ``_USERS`` counts the open recordings
_ORIGINALS: dict[Any, Callable[..., Any]] = {}
_USERS = 0
_LOCK = threading.Lock()


def _backend_name(member: Any) -> str:
    return str(getattr(member, "value", member))


def _served(member: Any, arg_names: set[str]) -> bool:
    """Backends asked for their LSE: they take ``return_lse`` and are not torch SDPA (seen by the mode)."""
    name = _backend_name(member)
    return "return_lse" in arg_names and name != "native" and not name.startswith("_native")


def _plain_call(kwargs: dict[str, Any]) -> bool:
    """A call whose LSE is the plain row normaliser: 4-D ``[batch, token, head, channel]`` tensors alike, no
    mask, dropout, causal, GQA or context parallelism, no autograd."""
    q, k, v = kwargs.get("query"), kwargs.get("key"), kwargs.get("value")
    tensors = (q, k, v)
    if not all(isinstance(t, torch.Tensor) and type(t) is torch.Tensor for t in tensors):
        return False
    if any(t.ndim != 4 or t.requires_grad for t in tensors):  # type: ignore[union-attr]
        return False
    if kwargs.get("attn_mask") is not None or kwargs.get("dropout_p", 0.0) != 0.0 or kwargs.get("is_causal", False):
        return False
    if kwargs.get("enable_gqa", False) or kwargs.get("_parallel_config") is not None or kwargs.get("return_lse"):
        return False
    if not (q.shape[0] == k.shape[0] == v.shape[0] and q.shape[2] == k.shape[2] == v.shape[2]):  # type: ignore[union-attr]
        return False  # grouped or multi-query keys (flash-attn serves them without enable_gqa)
    return q.dtype == k.dtype == v.dtype and q.device == k.device == v.device  # type: ignore[union-attr]


def _lse_bhq(lse: Any, batch: int, heads: int, nq: int) -> torch.Tensor | None:
    """A backend's LSE as ``[batch, head, query]``: flash-attn returns that, diffusers' own ops ``[batch, query,
    head]``; None for anything else."""
    if not isinstance(lse, torch.Tensor):
        return None
    if lse.ndim == 4 and lse.shape[-1] == 1:
        lse = lse[..., 0]
    if tuple(lse.shape) == (batch, heads, nq):
        return lse
    if tuple(lse.shape) == (batch, nq, heads):
        return lse.transpose(1, 2)
    return None


def _serve(cap: LSECapture, name: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run backend ``name`` for the capture ``cap`` in flight, keeping its LSE; returns what ``fn`` returns."""
    cap.attention_calls += 1
    cap.result = None
    if cap.attention_calls != 1 or not _plain_call(kwargs):
        return fn(**kwargs)
    q, k = kwargs["query"], kwargs["key"]  # [batch, token, head, channel]
    key = (str(q.device), str(q.dtype).replace("torch.", ""), f"diffusers-{name}")
    if attention_lse.VERIFIED.get(key) is False:
        return fn(**kwargs)
    try:
        returned = fn(**kwargs, return_lse=True)
    except Exception as error:  # a backend that cannot: never raise inside the pipeline call
        fall_back(key, f"raised {type(error).__name__} when asked for its log-sum-exp: {error}")
        return fn(**kwargs)
    out, raw = returned if isinstance(returned, tuple) and len(returned) == 2 else (returned, None)
    lse = _lse_bhq(raw, q.shape[0], q.shape[2], q.shape[1])
    scale = kwargs.get("scale")
    eff = float(scale) if scale is not None else q.shape[-1] ** -0.5
    if not attention_lse.VERIFIED.get(key):
        LSECapture.verifications += 1
        expected = fn(**kwargs)
        if lse is None:
            shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(returned).__name__
            fall_back(key, f"returned a log-sum-exp it cannot be read from ({shape})")
            return expected
        own = "its own call without return_lse"
        problem = first_call_problem(out, expected, lse, q.transpose(1, 2), k.transpose(1, 2), eff, own)
        if problem is not None:
            fall_back(key, problem)
            return expected
        attention_lse.VERIFIED[key] = True
        out = expected
    elif lse is None:
        fall_back(key, "returned a log-sum-exp it cannot be read from")
        return out if isinstance(out, torch.Tensor) else fn(**kwargs)
    cap.result = LSEResult(lse.detach().float(), eff, k.shape[1])  # [batch, head, query]
    LSECapture.fast_calls += 1
    return out


def _wrapped(member: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    name = _backend_name(member)

    @functools.wraps(fn)
    def backend(*args: Any, **kwargs: Any) -> Any:
        cap = compat.top_function_mode()
        if args or not isinstance(cap, LSECapture):  # not inside a recorded attention module
            return fn(*args, **kwargs)
        return _serve(cap, name, fn, kwargs)

    backend.__latentlens_original__ = fn  # type: ignore[attr-defined]
    return backend


def serve_backends(hooks: HookSet) -> None:
    """Wrap diffusers' non-SDPA attention backends (once per process while any recording needs it) until
    ``hooks.remove()``. Does nothing where this diffusers has no backend registry (after a notice)."""
    global _USERS
    registry = compat.attention_backend_registry().get("fast attention maps on diffusers' attention backends")
    if registry is None:
        return
    with _LOCK:
        if _USERS == 0:
            for member, fn in list(registry.backends.items()):
                if _served(member, registry.arg_names.get(member, set())):
                    _ORIGINALS[member] = fn
                    registry.backends[member] = _wrapped(member, fn)
        _USERS += 1
    hooks.undo_on_remove(functools.partial(_release, registry))


def _release(registry: compat.BackendRegistry) -> None:
    """One recording is done; the last one puts the original functions back (unless replaced since)."""
    global _USERS
    with _LOCK:
        _USERS -= 1
        if _USERS:
            return
        for member, fn in _ORIGINALS.items():
            current = registry.backends.get(member)
            if getattr(current, "__latentlens_original__", None) is fn:
                registry.backends[member] = fn
        _ORIGINALS.clear()


__all__ = ["serve_backends"]
