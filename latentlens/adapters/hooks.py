"""Hook plumbing shared by :mod:`latentlens.recorder` and :mod:`latentlens.interventions`.

Tensor sites use plain torch forward (pre-)hooks: they are removed by handle, run outside any
diffusers hook registered on the same module, and never reassign ``module.forward``. The only
diffusers hook is a stateless-in-effect :class:`~diffusers.hooks.ModelHook` on the transformer's
``HookRegistry`` that reads the cache context (``"cond"``/``"uncond"``) that pipelines such as
FluxPipeline set with ``transformer.cache_context(...)``.
"""

from __future__ import annotations

import itertools
from typing import Any
from collections.abc import Callable

from torch import nn

from latentlens.adapters.base import Adapter, CallState
from latentlens.errors import ConfigError

#: diffusers hooks that skip blocks, steps or attention computations (recording them would read cached values)
SKIPPING_HOOKS = {
    "FBCHeadBlockHook",
    "FBCBlockHook",
    "PyramidAttentionBroadcastHook",
    "FasterCacheDenoiserHook",
    "FasterCacheBlockHook",
    "MagCacheHeadHook",
    "MagCacheBlockHook",
    "SeaCacheRootHook",
    "SeaCacheLeaderBlockHook",
    "SeaCacheBlockHook",
    "SeaCachePostNormHook",
    "TaylorSeerCacheHook",
    "AttentionProcessorSkipHook",
    "FeedForwardSkipHook",
    "TransformerBlockSkipHook",
    "TextKVCacheTransformerHook",
    "TextKVCacheBlockHook",
}

_ids = itertools.count()


class CachingHookError(ConfigError):
    """The transformer carries a diffusers hook that skips blocks or steps."""


def find_skipping_hooks(transformer: nn.Module) -> list[str]:
    """``["ClassName on module.path", ...]`` for every block/step-skipping diffusers hook under ``transformer``."""
    # diffusers keeps a module's HookRegistry in its __dict__; a plain dict lookup per module (not
    # nn.Module.__getattr__, which raises for every module without one) keeps this cheap on each record()
    if not any("_diffusers_hook" in vars(module) for module in transformer.modules()):
        return []
    found = []
    for path, module in transformer.named_modules():
        registry = vars(module).get("_diffusers_hook")
        if registry is None:
            continue
        for hook in registry.hooks.values():
            if type(hook).__name__ in SKIPPING_HOOKS:
                found.append(f"{type(hook).__name__} on {path or '<transformer>'}")
    return found


def check_caching(transformer: nn.Module, allow_caching: bool) -> list[str]:
    found = find_skipping_hooks(transformer)
    if found and not allow_caching:
        raise CachingHookError(
            f"The transformer has diffusers caching hooks that skip blocks or steps ({'; '.join(found[:4])}"
            f"{' …' if len(found) > 4 else ''}); recorded values would silently come from a cache. Disable them "
            "(e.g. transformer.disable_cache()) or pass allow_caching=True to record which calls were skipped "
            "in rec.gaps."
        )
    return found


def _context_probe_cls() -> type:
    from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

    class _State(BaseState):
        def reset(self, *args: Any, **kwargs: Any) -> None:
            pass

    class ContextProbe(ModelHook):
        """Receives the cache context set by ``transformer.cache_context(name)``; changes nothing."""

        _is_stateful = True

        def __init__(self) -> None:
            super().__init__()
            self.state = StateManager(_State)

        @property
        def context_name(self) -> str | None:
            from latentlens.compat import cache_context_name

            return cache_context_name(self.state)

        def reset_state(self, module: nn.Module) -> nn.Module:
            self.state.reset()
            return module

    return ContextProbe


class HookSet:
    """Hooks installed by one context manager; :meth:`remove` undoes everything, idempotently."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self._undo: list[Callable[[], None]] = []

    def pre(self, module: nn.Module, fn: Callable, prepend: bool = False) -> None:
        self.handles.append(module.register_forward_pre_hook(fn, with_kwargs=True, prepend=prepend))

    def post(self, module: nn.Module, fn: Callable, prepend: bool = False, always_call: bool = False) -> None:
        self.handles.append(
            module.register_forward_hook(fn, with_kwargs=True, prepend=prepend, always_call=always_call)
        )

    def undo_on_remove(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` in :meth:`remove` (in reverse order of registration, after the hooks are gone)."""
        self._undo.append(undo)

    def context_probe(self, transformer: nn.Module) -> Any:
        """Register a :class:`ContextProbe` on the transformer's diffusers ``HookRegistry``."""
        from diffusers.hooks import HookRegistry

        had_registry = hasattr(transformer, "_diffusers_hook")
        had_forward = "forward" in transformer.__dict__
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        name = f"latentlens_context_probe_{next(_ids)}"
        probe = _context_probe_cls()()
        registry.register_hook(probe, name)

        def undo() -> None:
            registry.remove_hook(name, recurse=False)
            if not registry.hooks:
                if not had_forward and "forward" in transformer.__dict__:
                    del transformer.__dict__["forward"]
                if not had_registry and hasattr(transformer, "_diffusers_hook"):
                    del transformer._diffusers_hook

        self.undo_on_remove(undo)
        return probe

    def run_eagerly(self, compiled: list[str]) -> None:
        """Run ``torch.compile``'d code eagerly until :meth:`remove`, when the hooked model has ``compiled`` parts.

        Compiled graphs do not run Python hooks added after compilation, so a compiled denoiser would be
        recorded (or steered) silently incompletely; eager code runs every hook. Said once, in a notice.
        """
        if not compiled:
            return
        from latentlens import compat

        stance = compat.force_eager()
        if stance is None:
            raise ConfigError(
                f"The denoiser is compiled with torch.compile ({compiled[0]}), whose graphs skip latentlens's hooks, "
                "and this torch has no torch.compiler.set_stance to run it eagerly; record an uncompiled model."
            )

        def restore_stance() -> None:
            stance.__exit__(None, None, None)

        self.undo_on_remove(restore_stance)
        compat.notice(
            "torch.compile",
            f"{compiled[0]}{f' and {len(compiled) - 1} more' if len(compiled) > 1 else ''} is compiled; "
            "torch.compile graphs skip Python hooks, so while latentlens's hooks are installed compiled code runs "
            "eagerly (the same weights, outputs equal up to float rounding, eager speed).",
        )

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()
        while self._undo:
            self._undo.pop()()


class StepTracker:
    """Counts transformer calls per cache context and fills a :class:`CallState` before the blocks run."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.state = CallState()
        self.counts: dict[str | None, int] = {}
        self.probe: Any = None

    def install(self, hooks: HookSet) -> None:
        self.probe = hooks.context_probe(self.adapter.transformer)
        hooks.pre(self.adapter.transformer, self._begin, prepend=True)

    @property
    def n_steps(self) -> int:
        return max(self.counts.values(), default=0)

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = self.probe.context_name if self.probe is not None else None
        step = self.counts.get(context, 0)
        self.counts[context] = step + 1
        state = CallState(step=step, context=context)
        self.adapter.begin_call(state, args, kwargs)
        state.cfg_doubled = bool(self.adapter.cfg_doubled(args, kwargs))
        self.state = state


def cfg_rows(state: CallState, cfg: str) -> slice | None:
    """Batch rows of this call that belong to the ``cfg`` branch, or None if the call has none."""
    if cfg not in ("cond", "uncond", "both"):
        raise ConfigError(f"cfg={cfg!r} is not one of 'cond', 'uncond', 'both'.")
    if cfg == "both":
        return slice(None)
    if state.context in ("cond", "uncond"):
        return slice(None) if state.context == cfg else None
    if state.cfg_doubled:
        half = state.batch // 2
        return slice(half, None) if cfg == "cond" else slice(0, half)
    return slice(None)
