"""Exact attention maps during a call: capture q/k projections, take the row log-sum-exp from the
model's own SDPA call (a torch-function mode that lives exactly as long as the attention module's
forward), then compute only the requested quadrants (:func:`latentlens.attention.quadrant_maps`).

Example (what :func:`latentlens.record` does for ``attention="blocks.*.attn.img2txt"``)::

    maps = MapCapture(context, heads="mean", reduce=Reduce(None), keep=accumulate)
    maps.install_all(hooks, [(k, spec, ["img2txt"])])
"""

from __future__ import annotations

from typing import Any, Protocol
from collections.abc import Callable

import torch

from latentlens import compat
from latentlens.adapters.base import AttnSpec, CallState
from latentlens.adapters.hooks import HookSet
from latentlens.attention import quadrant_maps
from latentlens.attention_backends import serve_backends
from latentlens.attention_lse import LSECapture
from latentlens.capture.options import Heads, Reduce, pool_map
from latentlens.errors import ConfigError


class CallContext(Protocol):
    """What map capture reads of the recorder for the call in flight."""

    @property
    def active(self) -> bool: ...

    @property
    def state(self) -> CallState: ...

    @property
    def rows(self) -> slice | None: ...

    @property
    def call_index(self) -> torch.Tensor | None: ...

    @property
    def skipping(self) -> list[str]: ...


#: ``keep(name, tensor, dims)``: where finished maps go
Keep = Callable[[str, torch.Tensor, tuple[str, ...]], None]


def _exit_mode(cap: LSECapture) -> None:
    """Pop ``cap`` off the torch-function mode stack if it is on top (it is, unless someone leaked a mode)."""
    compat.pop_mode_if_top(cap)


class MapCapture:
    """Hooks that turn one call's q/k projections into exact, reduced attention maps."""

    def __init__(self, context: CallContext, heads: Heads, reduce: Reduce, keep: Keep) -> None:
        self.context = context
        self.heads = heads
        self.reduce = reduce
        self.keep = keep
        self._lse_caps: dict[int, LSECapture] = {}

    def install_all(self, hooks: HookSet, specs: list[tuple[int, AttnSpec, list[str]]]) -> None:
        """Hook every ``(k, spec, kinds)`` of ``specs`` (see :meth:`install`); while ``hooks`` are installed,
        diffusers' non-SDPA attention backends also hand over their log-sum-exp (:func:`serve_backends`)."""
        if specs:
            serve_backends(hooks)
        for k, spec, kinds in specs:
            self.install(hooks, k, spec, kinds)

    def install(self, hooks: HookSet, k: int, spec: AttnSpec, kinds: list[str]) -> None:
        """Hook attention module number ``k`` (``spec``) to produce the map ``kinds`` (e.g. ``["img2txt"]``)."""
        parts = [("q", i, p) for i, p in enumerate(spec.q_parts)] + [("k", i, p) for i, p in enumerate(spec.k_parts)]
        for role, i, part in parts:
            hooks.post(part.proj, self._capture_proj((k, role, i)))
        hooks.pre(spec.module, self._capture_kwargs(k))
        hooks.pre(spec.module, self._lse_open(k))
        hooks.post(spec.module, self._maps(k, spec, kinds))
        # runs first, and also when the module raises: the SDPA mode never outlives the call
        hooks.post(spec.module, self._lse_close(k, spec.prefix), prepend=True, always_call=True)

    def close_all(self) -> None:
        """Leave every SDPA mode still open (only after an interrupted call)."""
        for k in list(self._lse_caps)[::-1]:
            _exit_mode(self._lse_caps.pop(k))

    # -- hooks -----------------------------------------------------------------------------------
    def _capture_proj(self, key: tuple) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            if self.context.active:
                self.context.state.scratch[key] = out.detach()

        return hook

    def _capture_kwargs(self, k: int) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if self.context.active:
                self.context.state.scratch[(k, "kwargs")] = kwargs

        return hook

    def _lse_open(self, k: int) -> Callable:
        """Pre-hook: intercept the module's SDPA call to take its row log-sum-exp (fast maps)."""

        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if self.context.active and k not in self._lse_caps and compat.function_modes_usable():
                cap = LSECapture()
                cap.__enter__()
                self._lse_caps[k] = cap

        return hook

    def _lse_close(self, k: int, prefix: str) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            cap = self._lse_caps.pop(k, None)
            if cap is None:
                return
            _exit_mode(cap)
            if self.context.active and cap.attention_calls == 0:
                compat.notice(
                    "lse:no-sdpa",
                    f"{prefix} ran its attention neither through torch's scaled_dot_product_attention nor "
                    "through a diffusers attention backend latentlens can ask for its log-sum-exp, so its attention "
                    "maps recompute the softmax normaliser (exact, slower); diffusers' 'native' backend takes the "
                    "fast path.",
                )
            if self.context.active and cap.result is not None and cap.attention_calls == 1:
                self.context.state.scratch[(k, "lse")] = cap.result

        return hook

    def _maps(self, k: int, spec: AttnSpec, kinds: list[str]) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            ctx = self.context
            rows = ctx.rows
            if not ctx.active or rows is None:  # an active call always keeps some rows
                return
            st = ctx.state
            needed = [(k, "k", i) for i in range(len(spec.k_parts))]
            if any(key not in st.scratch for key in needed):
                if ctx.skipping:  # a cache hook returned a stored attention output: a gap, not an error
                    return
                raise RuntimeError(
                    f"latentlens did not see the key projections of {spec.prefix}; the attention processor "
                    "does not call to_k/add_k_proj (or to_qkv when fused). Please report this model/processor."
                )
            with torch.no_grad():
                maps = quadrant_maps(
                    spec,
                    st,
                    k,
                    st.scratch.get((k, "kwargs"), kwargs),
                    kinds,
                    rows,
                    heads=self.heads,
                    text_index=ctx.call_index,
                    lse=st.scratch.get((k, "lse")),
                )
            for key in list(st.scratch):
                if key[0] == k:
                    del st.scratch[key]
            for kind, m in maps.items():
                self._reduce_and_keep(f"{spec.prefix}.{kind}", spec.quadrants[kind], m, spec.image_grid(st))

        return hook

    def _reduce_and_keep(
        self, name: str, streams: tuple[str, str], m: torch.Tensor, grid: tuple[int, int] | None
    ) -> None:
        dims: tuple[str, ...] = ("batch", "query", "key") if self.heads == "mean" else ("batch", "head", "query", "key")
        q_stream, k_stream = streams
        if self.reduce.pool > 1:
            if grid is None:
                raise ConfigError(f"reduce pool={self.reduce.pool} needs the image grid, unknown for this model call.")
            m = pool_map(m, grid, self.reduce.pool, q_stream == "img", k_stream == "img")
        if self.reduce.mean_img_tokens and q_stream == "img":
            m = m.mean(dim=-2)
            dims = dims[:-2] + ("key",)
        self.keep(name, m, dims)


__all__ = ["CallContext", "MapCapture"]
