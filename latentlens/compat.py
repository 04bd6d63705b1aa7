"""Guarded access to the private torch / diffusers / zarr symbols latentlens relies on.

Every such symbol is looked up here, once, with its expected signature checked. When one is
missing or has changed (after an upgrade), the feature built on it switches to latentlens's exact
slow path and :func:`notice` says so in one line, once; nothing raises inside the user's
pipeline call. :func:`report` lists what was found.

Example::

    from latentlens import compat
    compat.report()          # {'torch.fused_sdp_choice': 'ok', 'zarr.chunk_key_layout': 'ok', ...}
    compat.SDPA_KERNELS["cuda", 3]  # the cuDNN attention op (None when this torch lacks it)
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import torch


class CompatNotice(UserWarning):
    """A private API latentlens uses is missing or changed; the exact slow path is used instead."""


_NOTICED: set[str] = set()


def notice(key: str, message: str) -> None:
    """Warn ``latentlens: <message>`` once per ``key`` (per process)."""
    if key in _NOTICED:
        return
    _NOTICED.add(key)
    warnings.warn(f"latentlens: {message}", CompatNotice, stacklevel=3)


@dataclass(frozen=True)
class Shim:
    """One looked-up private symbol: ``value`` (None when unusable) and why it is unusable."""

    name: str
    value: Any
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def get(self, feature: str) -> Any:
        """The symbol, or None after a one-line notice that ``feature`` falls back."""
        if self.ok:
            return self.value
        notice(self.name, f"{self.name} is unavailable ({self.problem}); {feature} uses the exact slow path.")
        return None


def _schema_shim(name: str, op: str, arguments: tuple[str, ...], returns: int) -> Shim:
    """An ``aten`` op whose leading argument names and return count are as expected."""
    try:
        packet = getattr(torch.ops.aten, op)
        schema = packet.default._schema
    except (AttributeError, RuntimeError) as error:
        return Shim(name, None, f"torch.ops.aten.{op} not found: {error}")
    names = tuple(a.name for a in schema.arguments)
    if names[: len(arguments)] != arguments or len(schema.returns) < returns:
        return Shim(name, None, f"torch.ops.aten.{op} has the signature {schema}, not the expected one")
    return Shim(name, packet.default)


def _attr_shim(name: str, owner: Any, path: str) -> Shim:
    value = owner
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return Shim(name, None, f"{path} not found in torch {torch.__version__}")
    return Shim(name, value)


# --------------------------------------------------------------------------- torch

FUSED_SDP_CHOICE = _attr_shim("torch.fused_sdp_choice", torch, "_fused_sdp_choice")
_LEN_MODES = _attr_shim("torch.function_mode_stack", torch, "_C._len_torch_function_stack")
_MODE_AT = _attr_shim("torch.function_mode_stack", torch, "_C._get_function_stack_at")
TORCH_FUNCTION_MODE = _attr_shim("torch.TorchFunctionMode", torch, "overrides.TorchFunctionMode")
MODE_STACK = _LEN_MODES if not _LEN_MODES.ok else _MODE_AT

_QKV = ("query", "key", "value")
FLASH_CPU = _schema_shim(
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention_for_cpu",
    _QKV + ("dropout_p", "is_causal"),
    2,
)
FLASH_CUDA = _schema_shim(
    "aten._scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention",
    _QKV + ("dropout_p", "is_causal", "return_debug_mask"),
    2,
)
EFFICIENT = _schema_shim(
    "aten._scaled_dot_product_efficient_attention",
    "_scaled_dot_product_efficient_attention",
    _QKV + ("attn_bias", "compute_log_sumexp", "dropout_p", "is_causal"),
    2,
)
CUDNN = _schema_shim(
    "aten._scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_cudnn_attention",
    _QKV + ("attn_bias", "compute_log_sumexp", "dropout_p", "is_causal", "return_debug_mask"),
    2,
)


def _backend(name: str) -> int | None:
    member = getattr(getattr(torch.nn.attention, "SDPBackend", None), name, None)
    return None if member is None else int(member)


FLASH_BACKEND = _backend("FLASH_ATTENTION")
EFFICIENT_BACKEND = _backend("EFFICIENT_ATTENTION")
CUDNN_BACKEND = _backend("CUDNN_ATTENTION")


def _run_flash_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> tuple:
    out, lse = FLASH_CPU.value(q, k, v, dropout_p=0.0, is_causal=False, attn_mask=None, scale=scale)
    return out, lse  # lse [batch, head, query]


def _run_flash_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> tuple:
    res = FLASH_CUDA.value(q, k, v, 0.0, False, False, scale=scale)
    return res[0], res[1]  # lse [batch, head, query]


def _run_efficient(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> tuple:
    res = EFFICIENT.value(q, k, v, None, True, 0.0, False, scale=scale)
    return res[0], res[1]  # lse [batch, heads, nq rounded up to a multiple of 32]


def _run_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> tuple:
    res = CUDNN.value(q, k, v, None, True, 0.0, False, False, scale=scale)
    return res[0], res[1]  # lse [batch, head, query, 1] (torch >= 2.9) or [batch, head, query]


#: ``(device type, SDPBackend value) -> (shim, runner(q, k, v, scale) -> (output, raw lse))``: the fused
#: kernel that SDPA itself dispatches to, called directly so that its row log-sum-exp is kept.
SDPA_KERNELS: dict[tuple[str, int], tuple[Shim, Callable[..., tuple]]] = {}
for _key, _entry in (
    (("cpu", FLASH_BACKEND), (FLASH_CPU, _run_flash_cpu)),
    (("cuda", FLASH_BACKEND), (FLASH_CUDA, _run_flash_cuda)),
    (("cuda", EFFICIENT_BACKEND), (EFFICIENT, _run_efficient)),
    (("cuda", CUDNN_BACKEND), (CUDNN, _run_cudnn)),
):
    if _key[1] is not None:
        SDPA_KERNELS[_key] = _entry  # type: ignore[index]

BACKEND_NAMES = {FLASH_BACKEND: "flash", EFFICIENT_BACKEND: "efficient", CUDNN_BACKEND: "cudnn"}


def normalise_lse(lse: torch.Tensor, nq: int) -> torch.Tensor | None:
    """A kernel's row log-sum-exp as ``[batch, head, query]``, or None if its layout is not understood.

    Accepts ``[batch, head, query]``, ``[batch, head, query, 1]`` (cuDNN from torch 2.9) and a longer query axis
    (the memory-efficient kernel pads the query axis to a multiple of 32 on CUDA; the padding is sliced off).
    """
    if lse.ndim == 4 and lse.shape[-1] == 1:
        lse = lse[..., 0]
    if lse.ndim != 3 or lse.shape[-1] < nq:
        return None
    return lse[..., :nq] if lse.shape[-1] != nq else lse


def sdp_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> int | None:
    """The SDPA backend the dispatcher would pick for an unmasked, non-causal call (None if unknown)."""
    choose = FUSED_SDP_CHOICE.get("fast attention maps")
    if choose is None:
        return None
    try:
        return int(choose(q, k, v, None, 0.0, False, scale=scale))
    except Exception as error:  # a changed signature: never raise inside the pipeline call
        notice(
            "torch.fused_sdp_choice.call",
            f"torch._fused_sdp_choice failed ({error}); attention maps use the exact slow path.",
        )
        return None


def top_function_mode() -> Any:
    """The torch-function mode on top of this thread's mode stack (None when empty or unreadable)."""
    if not (_LEN_MODES.ok and _MODE_AT.ok):
        return None
    n = _LEN_MODES.value()
    return _MODE_AT.value(n - 1) if n else None


def pop_mode_if_top(mode: Any) -> None:
    """Exit the torch-function ``mode`` if it is on top of the mode stack (it is, unless a mode leaked)."""
    if not (_LEN_MODES.ok and _MODE_AT.ok):
        with contextlib.suppress(Exception):
            mode.__exit__(None, None, None)
        return
    if top_function_mode() is mode:
        mode.__exit__(None, None, None)


def function_modes_usable() -> bool:
    """Whether the fast-map machinery (torch-function modes + their stack) is available."""
    return (
        MODE_STACK.get("fast attention maps") is not None and TORCH_FUNCTION_MODE.get("fast attention maps") is not None
    )


def unwrap_compiled(module: Any) -> Any:
    """The module inside a ``torch.compile(module)`` wrapper (``OptimizedModule._orig_mod``), else ``module``."""
    inner = getattr(module, "_orig_mod", None) if type(module).__name__ == "OptimizedModule" else None
    return inner if isinstance(inner, torch.nn.Module) else module


def compiled_in_place(module: torch.nn.Module) -> bool:
    """Whether ``module.compile()`` compiled this module in place (its ``_compiled_call_impl`` is set)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def force_eager() -> contextlib.AbstractContextManager[None] | None:
    """``torch.compiler.set_stance("force_eager")``, already in effect (exit it to restore), or None without it.

    Compiled graphs do not run Python forward hooks added after compilation; under this stance every
    ``torch.compile``'d function and module runs its eager code, hooks included.
    """
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None:
        return None
    return set_stance("force_eager")  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- diffusers


def cache_context_name(state_manager: Any) -> str | None:
    """The name of diffusers' current cache context (``"cond"``/``"uncond"``), read from ``StateManager._context``.

    None when no context is set; also None (after a notice) when diffusers no longer keeps it there:
    then the CFG branch is told by the doubled batch alone.
    """
    if not hasattr(state_manager, "_context"):
        notice(
            "diffusers.StateManager._context",
            "diffusers' StateManager has no _context attribute any more; "
            "CFG branches set with transformer.cache_context(...) are not told apart (all rows are kept).",
        )
        return None
    ctx = state_manager._context
    return getattr(ctx, "name", None) if ctx is not None else None


def native_attention() -> contextlib.AbstractContextManager[None]:
    """A context in which diffusers' attention dispatcher uses torch SDPA (its ``native`` backend) by default.

    For passes on the ``meta`` device: a process-wide default backend the user chose (``DIFFUSERS_ATTN_BACKEND``,
    ``set_attention_backend``) such as flex or flash-attn may not accept meta tensors. A no-op where this
    diffusers has no attention dispatcher (its processors then call SDPA themselves).
    """
    try:
        from diffusers.models.attention_dispatch import attention_backend
    except ImportError:
        return contextlib.nullcontext()
    return attention_backend("native")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class BackendRegistry:
    """diffusers' attention backend table: ``backends`` (``{AttentionBackendName: function}``, mutable) and
    ``arg_names`` (``{AttentionBackendName: set of keyword names}``), from ``_AttentionBackendRegistry``."""

    backends: dict[Any, Callable[..., Any]]
    arg_names: dict[Any, set[str]]


@functools.lru_cache(maxsize=1)
def attention_backend_registry() -> Shim:
    """diffusers' attention backend registry as a :class:`BackendRegistry` (``value`` None where unusable, or
    where this diffusers has no attention dispatcher).

    The dispatcher calls ``_AttentionBackendRegistry._backends[name](**kwargs)`` with the keywords in
    ``_supported_arg_names[name]``; fast maps on non-SDPA backends wrap those functions while recording.
    """
    name = "diffusers._AttentionBackendRegistry"
    try:
        from diffusers.models import attention_dispatch
    except ImportError:  # a diffusers from before the dispatcher: no backends to wrap, nothing to say
        return Shim(name, None)
    registry = getattr(attention_dispatch, "_AttentionBackendRegistry", None)
    backends = getattr(registry, "_backends", None)
    arg_names = getattr(registry, "_supported_arg_names", None)
    if not (isinstance(backends, dict) and isinstance(arg_names, dict)):
        return Shim(name, None, "diffusers' attention dispatcher has no _AttentionBackendRegistry._backends table")
    return Shim(name, BackendRegistry(backends, arg_names))


# --------------------------------------------------------------------------- zarr


@functools.lru_cache(maxsize=1)
def zarr_chunk_layout() -> Shim:
    """Whether zarr still writes an uncompressed chunk as ``ndarray.tobytes()`` at ``metadata.encode_chunk_key``.

    Checked once per process on a tiny throw-away array: the store's direct chunk reads and writes
    rely on exactly this layout; without it they go through zarr's own (exact, slower) path.
    """
    name = "zarr.chunk_key_layout"
    try:
        import numpy as np
        import zarr

        with tempfile.TemporaryDirectory(prefix="latentlens-zarr-check-") as tmp:
            array = zarr.create_array(
                str(tmp),
                shape=(2, 2, 3),
                chunks=(1, 1, 3),
                dtype="<f4",
                compressors=None,
                fill_value=np.nan,
                zarr_format=3,
            )
            data = np.arange(12, dtype="<f4").reshape(2, 2, 3)
            array[...] = data
            key = array.metadata.encode_chunk_key((1, 0, 0))
            path = os.path.join(tmp, key)
            with open(path, "rb") as handle:
                raw = handle.read()
            if raw != data[1:2, 0:1].tobytes():
                return Shim(name, None, f"the chunk file {key} of zarr {zarr.__version__} does not hold the raw bytes")
    except Exception as error:  # any change in zarr's API or layout: use zarr's own path
        return Shim(name, None, f"{type(error).__name__}: {error}")
    return Shim(name, True)


def zarr_raw_chunks_ok() -> bool:
    """Whether the store may read and write whole chunk files directly (else a notice, and zarr's path)."""
    return zarr_chunk_layout().get("the run store's direct chunk I/O") is not None


def report() -> dict[str, str]:
    """``{symbol: "ok" | problem}`` for every guarded private API (for bug reports)."""
    shims = [
        FUSED_SDP_CHOICE,
        MODE_STACK,
        TORCH_FUNCTION_MODE,
        FLASH_CPU,
        FLASH_CUDA,
        EFFICIENT,
        CUDNN,
        zarr_chunk_layout(),
        attention_backend_registry(),
    ]
    out = {s.name: "ok" if s.ok else str(s.problem) for s in shims}
    try:
        from diffusers.hooks.hooks import StateManager

        out["diffusers.StateManager._context"] = (
            "ok" if hasattr(StateManager(object), "_context") else "missing"  # type: ignore[arg-type]
        )
    except Exception as error:  # pragma: no cover - diffusers changed its hooks module
        out["diffusers.StateManager._context"] = f"{type(error).__name__}: {error}"
    return out


__all__ = [
    "CompatNotice",
    "Shim",
    "notice",
    "normalise_lse",
    "sdp_choice",
    "pop_mode_if_top",
    "report",
    "cache_context_name",
    "native_attention",
    "unwrap_compiled",
    "compiled_in_place",
    "force_eager",
    "zarr_chunk_layout",
    "zarr_raw_chunks_ok",
    "function_modes_usable",
    "top_function_mode",
    "BackendRegistry",
    "attention_backend_registry",
    "SDPA_KERNELS",
    "BACKEND_NAMES",
]
