"""Concept maps during a call: capture each joint block's image q/k/v (and attention output), then,
after the block ran, pass the concept tokens through it (:func:`latentlens.concepts.concept_block`).

The concept stream restarts at every recorded transformer call from the concept embeddings and
runs through the blocks up to the last requested one; while it runs, the recorder's own hooks are
suspended, so nothing it computes is mistaken for the model's tensors.

Example (what :func:`latentlens.record` does for ``concepts=[...]``)::

    caps = ConceptCapture(context, blocks, wanted, embeds, heads="mean", reduce=Reduce(None), keep=accumulate)
    caps.install(hooks)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from latentlens.adapters.base import ConceptBlock
from latentlens.adapters.hooks import HookSet
from latentlens.capture.maps import CallContext, Keep
from latentlens.capture.options import Heads, Reduce, pool_map
from latentlens.concepts import concept_block
from latentlens.errors import ConfigError


def _arg(args: tuple, kwargs: dict, name: str, pos: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else None


class ConceptCapture:
    """Hooks that run the concept stream alongside the model and keep its maps."""

    def __init__(
        self,
        context: CallContext,
        blocks: list[ConceptBlock],
        wanted: dict[int, list[str]],
        embeds: torch.Tensor,
        heads: Heads,
        reduce: Reduce,
        keep: Keep,
        suspend: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        self.context = context
        last = max(wanted)
        self.blocks = blocks[: last + 1]  # the stream must pass every block up to the last wanted one
        self.wanted = wanted  # block number -> kinds
        self.embeds = embeds  # [concept, channel]: the first block's concept-stream input
        self.heads = heads
        self.reduce = reduce
        self.keep = keep
        self.suspend = suspend or contextlib.nullcontext
        self._img: dict[tuple[int, str], torch.Tensor] = {}
        self._stream: torch.Tensor | None = None
        self._state_id: int | None = None

    def install(self, hooks: HookSet) -> None:
        for k, cb in enumerate(self.blocks):
            kinds = self.wanted.get(cb.block, [])
            roles = [("k", cb.img_k), ("v", cb.img_v)] + ([("q", cb.img_q)] if "img2concept" in kinds else [])
            for role, part in roles:
                hooks.post(part.proj, self._capture((k, role), part.stream == "joint"))
            if "img2concept_out" in kinds:
                if cb.img_out_joint:
                    hooks.post(cb.img_out, self._capture_out(k))
                else:
                    hooks.pre(cb.img_out, self._capture_out_input(k))
            hooks.post(cb.module, self._after_block(k, cb, kinds))

    # -- hooks -----------------------------------------------------------------------------------
    def _capture(self, key: tuple[int, str], joint: bool) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            ctx = self.context
            if ctx.active and ctx.rows is not None:
                x = out.detach()[ctx.rows]
                self._img[key] = x[:, ctx.state.text_len :] if joint else x

        return hook

    def _capture_out(self, k: int) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            ctx = self.context
            if ctx.active and ctx.rows is not None:
                self._img[(k, "out")] = out.detach()[ctx.rows][:, ctx.state.text_len :]

        return hook

    def _capture_out_input(self, k: int) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            ctx = self.context
            if ctx.active and ctx.rows is not None:
                x = args[0] if args else next(iter(kwargs.values()))
                self._img[(k, "out")] = x.detach()[ctx.rows]

        return hook

    def _after_block(self, k: int, cb: ConceptBlock, kinds: list[str]) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            ctx = self.context
            rows = ctx.rows
            if not ctx.active or rows is None:
                return
            st = ctx.state
            if k == 0 or self._state_id != id(st):
                if k != 0:
                    raise RuntimeError(f"latentlens: the concept stream missed the blocks before {cb.prefix}.")
                self._state_id = id(st)
                self._stream = None
            img = {role: self._img.pop((k, role)) for role in ("q", "k", "v", "out") if (k, role) in self._img}
            temb = _arg(args, kwargs, "temb", cb.temb_position)
            if not torch.is_tensor(temb) or "k" not in img or "v" not in img:
                raise RuntimeError(
                    f"latentlens did not see the image projections or temb of {cb.prefix}; the block's calling "
                    "convention differs from the one its adapter knows. Please report this model."
                )
            temb = temb[rows]
            with torch.no_grad(), self.suspend():
                stream = self._stream
                if stream is None:
                    stream = self.embeds.to(temb.device, temb.dtype).unsqueeze(0).expand(temb.shape[0], -1, -1)
                rope = None
                if cb.rope:
                    emb = _arg(args, kwargs, "image_rotary_emb", cb.rope_position)
                    if emb is not None:
                        t = st.text_len
                        cos, sin = emb
                        rope = ((cos[t:], sin[t:]), (cos[:1], sin[:1]))
                result = concept_block(cb, stream, temb, img, rope, kinds, heads=self.heads)
                self._stream = result.stream
            for kind, m in result.maps.items():
                self._reduce_and_keep(f"{cb.prefix}.{kind}", m, kind == "img2concept" and self.heads == "all")

        return hook

    def _reduce_and_keep(self, name: str, m: torch.Tensor, per_head: bool) -> None:
        dims: tuple[str, ...] = ("batch", "head", "query", "key") if per_head else ("batch", "query", "key")
        grid = self.context.state.grid
        if self.reduce.pool > 1:
            if grid is None:
                raise ConfigError(f"reduce pool={self.reduce.pool} needs the image grid, unknown for this model call.")
            m = pool_map(m, grid, self.reduce.pool, True, False)
        if self.reduce.mean_img_tokens:
            m = m.mean(dim=-2)
            dims = (*dims[:-2], "key")
        self.keep(name, m, dims)


__all__ = ["ConceptCapture"]
