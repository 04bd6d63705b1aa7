"""Interventions: ``steer`` (add α·d at a site), ``patch`` (replace a site with recorded values) and
``ablate`` (project a direction out of a site).

Both are context managers built on the same named sites as :func:`latentlens.record`, use torch
hooks that are removed on exit, and compose with ``record``: their hooks run before any
recording hook on the same module, so a recording sees the modified activation.

Example::

    with latentlens.steer(pipe, "blocks.3.resid_out.img", direction, alpha=4.0, steps=range(0, 10)):
        edited = pipe(prompt, generator=torch.Generator().manual_seed(0)).images

    with latentlens.record(pipe, sites="blocks.3.resid_out.img") as donor:
        pipe("a blue square", generator=torch.Generator().manual_seed(0))
    with latentlens.patch(pipe, "blocks.3.resid_out.img", donor):
        patched = pipe("a red square", generator=torch.Generator().manual_seed(0)).images
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import torch

from latentlens.adapters import adapter_for, compiled_parts, split_target
from latentlens.adapters.base import CallState, SiteSpec
from latentlens.adapters.hooks import HookSet, StepTracker, cfg_rows, check_caching
from latentlens.capture.options import check_cfg
from latentlens.errors import ConfigError
from latentlens.names import Steps, StepSelection, is_map, recordable_names, unknown_name_error


def _site_spec(target: Any, site: str) -> tuple[Any, SiteSpec]:
    adapter = adapter_for(target)
    name = adapter.alias(site)
    specs = {s.name: s for s in adapter.sites()}
    if name not in specs:
        valid = [n for n in recordable_names(adapter) if not is_map(n)]
        raise unknown_name_error(site, valid)
    spec = specs[name]
    if spec.set is None:
        raise ConfigError(
            f"Site {site!r} is read-only (a derived value such as AdaLN parameters); steer or patch a "
            "residual, attention-output or feed-forward site instead."
        )
    return adapter, spec


def _direction_arguments(
    site: Any, direction: Any, steps: Steps, tokens: Any, usage: str
) -> tuple[str, Any, Steps, Any]:
    """``(site, vector, steps, tokens)`` of a steer/ablate call: a ``Direction`` fills what was not given."""
    if direction is None and hasattr(site, "vector"):
        direction, site = site, site.site
    if direction is None:
        raise ConfigError(f"{usage.split('(')[0]} needs a direction: {usage}.")
    if hasattr(direction, "vector"):
        steps = getattr(direction, "steps", None) if steps is None else steps
        tokens = getattr(direction, "tokens", None) if tokens is None else tokens
        vector = direction.vector
    else:
        vector = direction
    if not isinstance(site, str):
        raise ConfigError(f"site={site!r} must be a site name such as 'blocks.3.resid_out.img'.")
    return site, vector, steps, tokens


def _token_index(tokens: Any) -> torch.Tensor | None:
    if tokens is None:
        return None
    if isinstance(tokens, int) and not isinstance(tokens, bool):
        tokens = [tokens]
    try:
        idx = torch.as_tensor(list(tokens), dtype=torch.long)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"tokens={tokens!r} must be token indices (ints).") from error
    if (idx < 0).any():
        raise ConfigError(f"tokens={tokens!r} holds negative indices; pass indices >= 0.")
    return idx


class _Intervention:
    """Installs one modifying hook on a site; subclasses implement :meth:`modify`."""

    def __init__(self, target: Any, site: str, steps: Steps, cfg: str) -> None:
        self.cfg = check_cfg(cfg)
        self.adapter, self.spec = _site_spec(target, site)
        self.transformer, self.pipe = split_target(target)
        self.compiled = compiled_parts(target)
        self.site = self.spec.name
        self.steps = StepSelection(steps)
        self.hooks = HookSet()
        self.tracker = StepTracker(self.adapter)
        self.calls = 0  # calls that were modified

    def modify(self, state: CallState, value: torch.Tensor, rows: slice) -> torch.Tensor | None:
        raise NotImplementedError

    def _site_tokens(self, tokens: Sequence[int] | int | None) -> torch.Tensor | None:
        """Token indices of a per-token site (a :class:`ConfigError` for sites without a token axis)."""
        index = _token_index(tokens)
        if index is not None and (len(self.spec.dims) < 2 or self.spec.dims[1] != "token"):
            raise ConfigError(f"tokens=... needs a per-token site; {self.site!r} has axes {self.spec.dims}.")
        return index

    def _apply(self, args: tuple, kwargs: dict, out: Any) -> Any:
        state = self.tracker.state
        if state.step not in self.steps:
            return None
        rows = cfg_rows(state, self.cfg)
        if rows is None:
            return None
        value = self.spec.get(state, args, kwargs, out)
        new = self.modify(state, value, rows)
        if new is None or self.spec.set is None:  # read-only sites are refused in _site_spec
            return None
        self.calls += 1
        return self.spec.set(state, args, kwargs, out, new)

    def __enter__(self) -> _Intervention:
        check_caching(self.transformer, allow_caching=False)
        try:
            self.hooks.run_eagerly(self.compiled)
            # both hooks are prepended; the tracker goes in last so that it runs first, also when the
            # site is an input of the transformer itself (text.tokens, latents)
            if self.spec.hook == "pre":
                self.hooks.pre(self.spec.module, lambda m, a, k: self._apply(a, k, None), prepend=True)
            else:
                self.hooks.post(self.spec.module, lambda m, a, k, o: self._apply(a, k, o), prepend=True)
            self.tracker.install(self.hooks)
        except BaseException:
            self.hooks.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.hooks.remove()


class steer(_Intervention):
    """Add ``alpha · direction`` to a site's activation at chosen steps and tokens.

    Args:
        target: a pipeline or a bare transformer.
        site: a settable site name (``blocks.{i}.resid_out.img`` …), or a ``Direction``-like object
            (``.vector``, ``.site``, ``.steps``, ``.tokens``) when ``direction`` is omitted.
        direction: a vector ``[channel]`` (or broadcastable to the site's per-call tensor without
            the batch axis), or a ``Direction``-like object whose ``steps``/``tokens`` are used unless given.
        alpha: strength; ``alpha=0`` leaves the run bit-identical.
        steps: transformer-call indices (None = all). tokens: token indices of the site's stream (None = all).
        cfg: rows of a CFG-doubled batch to modify ("both" by default).

    Example::

        with steer(pipe, "blocks.3.resid_out.img", d, alpha=2.0, steps=[0, 1]):
            pipe(prompt)
    """

    def __init__(
        self,
        target: Any,
        site: Any,
        direction: Any = None,
        alpha: float = 1.0,
        steps: Steps = None,
        tokens: Sequence[int] | int | None = None,
        cfg: str = "both",
    ) -> None:
        site, vector, steps, tokens = _direction_arguments(
            site, direction, steps, tokens, "steer(target, site, vector_or_Direction, alpha=...)"
        )
        super().__init__(target, site, steps, cfg)
        self.vector = torch.as_tensor(vector).detach()
        self.alpha = float(alpha)
        self.tokens = self._site_tokens(tokens)

    def modify(self, state: CallState, value: torch.Tensor, rows: slice) -> torch.Tensor | None:
        if self.alpha == 0.0:
            return None
        d = (self.alpha * self.vector).to(device=value.device, dtype=value.dtype)
        if d.shape[-1] != value.shape[-1]:
            raise ConfigError(
                f"The steering vector has {d.shape[-1]} channels but site {self.site!r} has {value.shape[-1]} "
                f"(shape {tuple(value.shape)}); use a direction found at this site of this model."
            )
        new = value.clone()
        if d.ndim == 2:  # token-wise direction: one row per (selected) token
            wanted = value.shape[1] if self.tokens is None else len(self.tokens)
            if value.ndim != 3 or d.shape[0] not in (1, wanted):  # [1, channel] broadcasts over the tokens
                raise ConfigError(
                    f"The token-wise direction has {d.shape[0]} rows but site {self.site!r} has {wanted} "
                    f"{'tokens' if self.tokens is None else 'selected tokens'} (shape {tuple(value.shape)}); "
                    "use prompts padded to the same length as the ones the direction came from, or pass tokens=..."
                )
        if self.tokens is None:
            new[rows] += d
        else:
            if int(self.tokens.max()) >= value.shape[1]:
                raise ConfigError(f"tokens={self.tokens.tolist()} exceed the {value.shape[1]} tokens of {self.site!r}.")
            idx = self.tokens.to(value.device)
            sub = new[rows]  # [batch, token, channel] (a view for slice rows)
            sub[:, idx] += d
        return new


class patch(_Intervention):
    """Replace a site's activation with values recorded elsewhere.

    ``source`` is a :class:`~latentlens.recorder.Recording` holding ``site`` (its step axis and CFG
    branch are used), or a tensor ``[step, batch, ...]`` indexed by transformer-call index. When the
    source batch is half the call's batch and the pipeline doubles it for CFG, the ``cfg`` rows
    ("cond" unless given) are replaced; when it matches the whole batch, every row is.
    ``tokens`` (indices of the site's stream) replaces only those token positions.

    Example::

        with patch(pipe, "blocks.2.resid_out.txt", donor_recording, steps=range(0, 5)):
            pipe(prompt)
    """

    def __init__(
        self,
        target: Any,
        site: str,
        source: Any,
        steps: Steps = None,
        cfg: str | None = None,
        tokens: Sequence[int] | int | None = None,
    ) -> None:
        super().__init__(target, site, steps, "both")
        self.tokens = self._site_tokens(tokens)
        if hasattr(source, "names") and hasattr(source, "steps") and not torch.is_tensor(source):
            if self.site not in source:
                raise ConfigError(
                    f"The source recording holds no {self.site!r}; record it there first (recorded: "
                    f"{', '.join(source.names[:6])}{' …' if len(source.names) > 6 else ''})."
                )
            data = source[self.site]
            self.step_pos = {s: i for i, s in enumerate(source.steps)}
            self.branch = cfg or source.cfg
        elif torch.is_tensor(source):
            data = source
            self.step_pos = {s: s for s in range(source.shape[0])}
            self.branch = cfg
        else:
            raise ConfigError(
                f"source must be a Recording or a tensor [step, batch, ...]; got {type(source).__name__}."
            )
        self.source = data

    def modify(self, state: CallState, value: torch.Tensor, rows: slice) -> torch.Tensor | None:
        pos = self.step_pos.get(state.step)
        if pos is None:
            return None
        src = self.source[pos].to(device=value.device, dtype=value.dtype)  # [batch, ...]
        b = value.shape[0]
        if src.shape[0] == b:
            target_rows = slice(None)
        elif state.context in ("cond", "uncond") and src.shape[0] == 2 * b:
            half = src.shape[0] // 2
            src = src[half:] if state.context == "cond" else src[:half]
            target_rows = slice(None)
        elif state.cfg_doubled and src.shape[0] * 2 == b:
            branch = self.branch if self.branch in ("cond", "uncond") else "cond"
            kept = cfg_rows(state, branch)
            if kept is None:
                return None
            target_rows = kept
        else:
            raise ConfigError(
                f"patch {self.site!r}: the source has batch {src.shape[0]} but the model call has batch {b}"
                f"{' (CFG-doubled)' if state.cfg_doubled else ''}; record the source with the same prompts count."
            )
        if src.shape[1:] != value.shape[1:]:
            raise ConfigError(
                f"patch {self.site!r}: source values have shape {tuple(src.shape[1:])} per row but the site has "
                f"{tuple(value.shape[1:])}; record the source with the same model, resolution and prompt length."
            )
        new = value.clone()
        if self.tokens is None:
            new[target_rows] = src
        else:
            if int(self.tokens.max()) >= value.shape[1]:
                raise ConfigError(f"tokens={self.tokens.tolist()} exceed the {value.shape[1]} tokens of {self.site!r}.")
            idx = self.tokens.to(value.device)
            sub = new[target_rows]  # [batch, token, channel] (a view: target_rows is a slice)
            sub[:, idx] = src[:, idx]
        return new


class ablate(_Intervention):
    """Project a direction out of a site's activation: ``x ← x − (x·d̂) d̂`` at chosen steps and tokens.

    ``direction`` is a vector ``[channel]`` or a ``Direction`` (its ``site``, ``steps`` and
    ``tokens`` are used unless given); a token-wise ``[token, channel]`` direction projects each
    token row out of its own token. The causal test of a probe's direction: if the model reads the
    attribute along ``d``, removing ``d`` changes the image.

    Example::

        with ablate(pipe, direction, steps=range(10, 20)):
            pipe(prompt)
    """

    def __init__(
        self,
        target: Any,
        site: Any,
        direction: Any = None,
        steps: Steps = None,
        tokens: Sequence[int] | int | None = None,
        cfg: str = "both",
    ) -> None:
        site, vector, steps, tokens = _direction_arguments(
            site, direction, steps, tokens, "ablate(target, site, vector_or_Direction)"
        )
        super().__init__(target, site, steps, cfg)
        vector = torch.as_tensor(vector).detach().to(torch.float64)
        norm = vector.norm(dim=-1, keepdim=True)
        if not bool((norm > 0).any()):
            raise ConfigError("ablate: the direction is the zero vector; there is nothing to project out.")
        self.unit = torch.where(norm > 0, vector / norm.clamp_min(1e-30), torch.zeros_like(vector))
        self.tokens = self._site_tokens(tokens)

    def modify(self, state: CallState, value: torch.Tensor, rows: slice) -> torch.Tensor | None:
        u = self.unit.to(device=value.device, dtype=torch.float32)
        if u.shape[-1] != value.shape[-1]:
            raise ConfigError(
                f"The direction has {u.shape[-1]} channels but site {self.site!r} has {value.shape[-1]} "
                f"(shape {tuple(value.shape)}); use a direction found at this site of this model."
            )
        new = value.clone()
        sub = new[rows]  # [b, (tokens,) channel], a view
        if self.tokens is not None:
            if int(self.tokens.max()) >= value.shape[1]:
                raise ConfigError(f"tokens={self.tokens.tolist()} exceed the {value.shape[1]} tokens of {self.site!r}.")
            idx = self.tokens.to(value.device)
            part = sub[:, idx].float()
        else:
            part = sub.float()
        if u.ndim == 2 and (part.ndim != 3 or u.shape[0] not in (1, part.shape[1])):
            raise ConfigError(
                f"The token-wise direction has {u.shape[0]} rows but site {self.site!r} has {part.shape[1]} "
                "(selected) tokens; use prompts with the token layout the direction came from, or pass tokens=..."
            )
        coef = (part * u).sum(dim=-1, keepdim=True)  # [batch, 1] or [batch, token, 1]
        part = (part - coef * u).to(value.dtype)
        if self.tokens is not None:
            sub[:, idx] = part
        else:
            sub[...] = part
        return new


__all__ = ["ablate", "patch", "steer"]
