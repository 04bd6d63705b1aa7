"""``record``: capture named activations and exact attention maps from an unmodified diffusers pipeline.

Example::

    import latentlens
    with latentlens.record(pipe, sites="blocks.*.resid_out.*", attention="blocks.*.attn.img2txt") as rec:
        pipe("a small red circle", num_inference_steps=4)
    rec["blocks.0.resid_out.img"].shape   # [step, batch, token, channel]
    rec["blocks.0.attn.img2txt"].shape    # [step, batch, image_token, text_token] (head mean)
    rec.timesteps                          # the transformer's timestep at each recorded step

Everything is captured with torch hooks that are removed on exit (also when the pipeline raises);
the model's output is bit-identical to an unrecorded run. Selection (steps, CFG branch, tokens)
and reductions happen at capture time, so only what was asked for is kept in memory.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from latentlens.adapters import adapter_for, split_target
from latentlens.adapters.base import Adapter, AttnSpec, CallState, SiteSpec
from latentlens.adapters.hooks import HookSet, StepTracker, cfg_rows, check_caching
from latentlens.attention import quadrant_maps
from latentlens import compat
from latentlens.attention_lse import LSECapture
from latentlens.errors import ConfigError
from latentlens.names import Sites, Steps, StepSelection, block_of, is_map, select_names, unknown_name_error

_CTX_ORDER = {"uncond": 0, None: 1, "cond": 1}


def _exit_mode(cap: LSECapture) -> None:
    """Pop ``cap`` off the torch-function mode stack if it is on top (it is, unless someone leaked a mode)."""
    compat.pop_mode_if_top(cap)


# --------------------------------------------------------------------------- names


def _all_names(adapter: Adapter) -> list[str]:
    """Every recordable name in the stable order: boundary inputs, blocks (sites then maps), ``pred``."""
    names: list[tuple[tuple, str]] = []
    for k, s in enumerate(adapter.sites()):
        b = block_of(s.name)
        group = 2 if s.name == "pred" else (1 if b is not None else 0)
        names.append(((group, b or 0, 0, k), s.name))
    for k, spec in enumerate(adapter.attention()):
        for kind in spec.quadrants:
            names.append(((1, spec.block, 1, k, list(spec.quadrants).index(kind)), f"{spec.prefix}.{kind}"))
    return [n for _, n in sorted(names)]


def _alias(adapter: Adapter) -> Callable[[str], str]:
    return getattr(adapter, "alias", lambda name: name)


def site_names(target: Any) -> list[str]:
    """Every recordable name for this pipeline or transformer, in a stable order.

    Example: ``site_names(pipe)[:3]`` → ``['latents', 'text.tokens', 'text.pooled']``.
    """
    return _all_names(adapter_for(target))


# --------------------------------------------------------------------------- options


class _Reduce:
    """Capture-time reductions: ``mean_img_tokens``, ``mean_steps``, ``pool=N`` (maps)."""

    def __init__(self, reduce: Any) -> None:
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


def _resolve_tokens(tokens: Any, adapter: Adapter, prompt: str | Sequence[str] | None = None) -> torch.Tensor | None:
    """Token indices from ints or words: ``[k]`` shared by all rows, or ``[n_prompts, k]`` for a prompt list."""
    if tokens is None:
        return None
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    prompts = [prompt] if isinstance(prompt, str) or prompt is None else list(prompt)
    rows: list[list[int]] = []
    for p in prompts:
        idx: list[int] = []
        for t in tokens:
            if isinstance(t, bool):
                raise ConfigError(f"tokens={tokens!r}: {t!r} is not a token index or a word.")
            if isinstance(t, int):
                if t < 0:
                    raise ConfigError(f"tokens={tokens!r} holds the negative index {t}; pass indices >= 0.")
                idx.append(t)
            elif isinstance(t, str):
                if p is None:
                    raise ConfigError(
                        f"tokens={tokens!r} names the word {t!r}; pass prompt='...' (the prompt it occurs in, or "
                        "the list of prompts of the batch) so its token positions can be found, or pass token indices."
                    )
                idx.extend(word_token_indices(adapter, t, p))
            else:
                raise ConfigError(f"tokens={tokens!r}: {t!r} is not a token index or a word.")
        rows.append(sorted(set(idx)))
    if len(rows) == 1:
        return torch.tensor(rows[0], dtype=torch.long)
    counts = {len(r) for r in rows}
    if len(counts) > 1:
        detail = "; ".join(f"{p!r}: {len(r)}" for p, r in zip(prompts, rows))
        raise ConfigError(
            f"tokens={tokens!r} select a different number of tokens in different prompts ({detail}); every "
            "row needs the same count — record prompts with the same tokenisation of these words together."
        )
    return torch.tensor(rows, dtype=torch.long)  # [n_prompts, k]


def word_token_indices(adapter: Adapter, word: str, prompt: str) -> list[int]:
    """Positions in ``encoder_hidden_states`` of the tokens of ``word`` (its first whole-word occurrence) in ``prompt``.

    Uses the pipeline's own tokenizers and their offsets mapping, one segment per text encoder
    (SD3: CLIP tokens then T5 tokens; Flux: T5; PixArt and the toy model: one tokenizer).
    Example: ``word_token_indices(adapter_for(pipe), "red", "a small red circle")``.
    """
    target = word.strip()
    found = re.search(r"(?<!\w)" + re.escape(target) + r"(?!\w)", prompt, flags=re.IGNORECASE) if target else None
    if found is None:
        raise ConfigError(f"tokens: the word {target!r} does not occur in the prompt {prompt!r}.")
    start, stop = found.span()
    segments = adapter.text_segments()
    if not segments:
        raise ConfigError(
            f"tokens: {word!r} is a word, but the target has no tokenizer (a bare transformer?); "
            "pass token indices instead."
        )
    out: list[int] = []
    for tokenizer, offset in segments:
        enc = tokenizer(prompt, return_offsets_mapping=True, truncation=True,
                        max_length=getattr(tokenizer, "model_max_length", None))
        for i, (a, b) in enumerate(enc["offset_mapping"]):
            if b > a and a < stop and b > start:
                out.append(offset + i)
    if not out:
        raise ConfigError(f"tokens: the word {word!r} was truncated away by the tokenizer; pass token indices.")
    return out


# --------------------------------------------------------------------------- the recording


class Recording:
    """What :func:`record` captured. ``rec[name]`` → tensor ``[step, batch, ...]`` on CPU.

    Attributes: ``names`` (recorded names, stable order), ``timesteps`` (transformer timestep per
    recorded step), ``steps`` (the transformer-call indices of the step axis), ``gaps``
    (``[(step, block)]`` skipped by a diffusers cache, with ``allow_caching=True``), ``cfg``,
    ``meta`` (adapter, model class, config, options), ``sample_ids`` (the samples it became in a
    ``store``; then ``rec[name]`` reads lazily from disk and holds nothing in memory).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.timesteps: list[float] = []
        self.steps: list[int] = []
        self.gaps: list[tuple[int, int]] = []
        self.cfg: str = "cond"
        self.meta: dict[str, Any] = {}
        self._data: dict[str, torch.Tensor] = {}
        self._dims: dict[str, tuple[str, ...]] = {}
        self._done = False
        self.sample_ids: list[int] | None = None
        self._store: Any = None
        self._dtypes: dict[str, torch.dtype] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def _check(self, name: str) -> None:
        if not self._done:
            raise ConfigError("The recording is still running; read rec[...] after the `with record(...)` block.")
        if name not in self._data:
            raise unknown_name_error(name, self.names, what="recorded")

    def __getitem__(self, name: str) -> torch.Tensor:
        self._check(name)
        if self._store is None:
            return self._data[name]
        ids = self.sample_ids or []
        view = self._store[name]  # lazy [sample, ...]
        contiguous = ids == list(range(ids[0], ids[0] + len(ids))) if ids else True
        rows = view[ids[0] : ids[0] + len(ids)] if contiguous and ids else view[ids]  # [batch, step, ...]
        data = torch.from_numpy(np.ascontiguousarray(np.asarray(rows).swapaxes(0, 1)))  # [step, batch, ...]
        return data.to(self._dtypes[name])

    def _move_to_store(self, store: Any, sample_ids: Sequence[int]) -> None:
        """The recording now lives in ``store`` as ``sample_ids``: drop the in-memory tensors."""
        self._dtypes = {name: tensor.dtype for name, tensor in self._data.items()}
        self._shapes = {name: tuple(tensor.shape) for name, tensor in self._data.items()}
        self._data = dict.fromkeys(self._data)  # keep the names for `in`; the tensors are freed
        self.sample_ids = [int(i) for i in sample_ids]
        self._store = store

    def dims(self, name: str) -> tuple[str, ...]:
        """Axis names of ``rec[name]``, e.g. ``("step", "batch", "token", "channel")``."""
        self._check(name)
        return self._dims[name]

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def keys(self) -> list[str]:
        return list(self.names)

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, self[n]) for n in self.names]

    def __repr__(self) -> str:
        shapes = self._shapes if self._store is not None else {n: tuple(t.shape) for n, t in self._data.items()}
        shown = ", ".join(f"{n}: {shapes[n]}" for n in self.names[:4]) if self._done else "running"
        more = f", … (+{len(self.names) - 4})" if len(self.names) > 4 else ""
        return f"Recording({shown}{more})"


# --------------------------------------------------------------------------- the recorder


class _Recorder:
    def __init__(
        self,
        target: Any,
        sites: Sites,
        attention: Sites,
        steps: Steps,
        cfg: str,
        tokens: Any,
        reduce: Any,
        dtype: torch.dtype,
        heads: str,
        store: Any,
        allow_caching: bool,
        prompt: str | Sequence[str] | None = None,
    ) -> None:
        if cfg not in ("cond", "uncond", "both"):
            raise ConfigError(f"cfg={cfg!r} is not one of 'cond', 'uncond', 'both'.")
        if heads not in ("mean", "all"):
            raise ConfigError(f"heads={heads!r} must be 'mean' (head average) or 'all' (per head).")
        self.adapter = adapter_for(target)
        self.transformer, self.pipe = split_target(target)
        self.cfg = cfg
        self.dtype = dtype
        self.heads = heads
        self.store = store
        self.allow_caching = allow_caching
        self.steps = StepSelection(steps)
        self.reduce = _Reduce(reduce)
        self.text_index = _resolve_tokens(tokens, self.adapter, prompt)
        self.tokens = tokens

        valid = _all_names(self.adapter)
        alias = _alias(self.adapter)
        map_valid = [n for n in valid if is_map(n)]
        wanted = set(select_names(valid, sites, alias)) | set(select_names(map_valid, attention, alias))
        if not wanted:
            raise ConfigError("Nothing to record: pass sites=... and/or attention=... (see latentlens.site_names).")
        self.names = [n for n in valid if n in wanted]
        self.site_specs = {s.name: s for s in self.adapter.sites() if s.name in wanted}
        self.map_specs: list[tuple[int, AttnSpec, list[str]]] = []
        for k, spec in enumerate(self.adapter.attention()):
            kinds = [kind for kind in spec.quadrants if f"{spec.prefix}.{kind}" in wanted]
            if kinds:
                self.map_specs.append((k, spec, kinds))

        self.hooks = HookSet()
        self.tracker = StepTracker(self.adapter)
        self.rec = Recording()
        self.rec.cfg = cfg
        self._store: dict[str, dict[int, list[tuple[int, torch.Tensor]]]] = defaultdict(dict)
        self._sums: dict[str, dict[int, list[Any]]] = defaultdict(dict)
        self._dims: dict[str, tuple[str, ...]] = {}
        self._timesteps: dict[int, float] = {}
        self._warned: set[str] = set()
        self._ran: set[int] = set()
        self._active = False
        self._rows: slice | None = None
        self._call_index: torch.Tensor | None = None
        self._lse_caps: dict[int, LSECapture] = {}

    # -- install / remove -------------------------------------------------------------------------
    def install(self) -> None:
        self.skipping = check_caching(self.transformer, self.allow_caching)
        try:
            self.tracker.install(self.hooks)
            self.hooks.pre(self.transformer, self._begin)
            for spec in self.site_specs.values():
                if spec.hook == "pre":
                    self.hooks.pre(spec.module, self._site_pre(spec))
                else:
                    self.hooks.post(spec.module, self._site_post(spec))
            for k, spec, kinds in self.map_specs:
                parts = [("q", i, p) for i, p in enumerate(spec.q_parts)] + [("k", i, p) for i, p in enumerate(spec.k_parts)]
                for role, i, part in parts:
                    self.hooks.post(part.proj, self._capture_proj((k, role, i)))
                self.hooks.pre(spec.module, self._capture_kwargs(k))
                self.hooks.pre(spec.module, self._lse_open(k))
                self.hooks.post(spec.module, self._maps(k, spec, kinds))
                # runs first, and also when the module raises: the SDPA mode never outlives the call
                self.hooks.post(spec.module, self._lse_close(k), prepend=True, always_call=True)
            if self.skipping:
                blocks = sorted({block_of(n) for n in self.names if block_of(n) is not None})
                for b in blocks:
                    self.hooks.post(self.adapter.block_probe(b), self._mark_ran(b))
                self._gap_blocks = blocks
            self.hooks.post(self.transformer, self._end)
        except BaseException:
            self.hooks.remove()
            raise

    def remove(self) -> None:
        self.hooks.remove()
        self._close_all_lse()

    # -- per call --------------------------------------------------------------------------------
    @property
    def state(self) -> CallState:
        return self.tracker.state

    def _begin(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._close_all_lse()  # left open only if an earlier call was interrupted (BaseException)
        st = self.state
        rows = cfg_rows(st, self.cfg)
        self._active = rows is not None and st.step in self.steps
        self._rows = rows
        self._ran = set()
        if self._active:
            self._timesteps.setdefault(st.step, st.timestep)
            self._call_index = self._index_for_call(st)

    def _index_for_call(self, st: CallState) -> torch.Tensor | None:
        """The text-token selection for this call's kept rows: ``[k]`` or ``[rows, k]``."""
        ti = self.text_index
        if ti is None:
            return None
        if ti.numel() and int(ti.max()) >= st.text_len:
            raise ConfigError(
                f"tokens={self.tokens!r} selects token {int(ti.max())}, but this model call has only "
                f"{st.text_len} text tokens (0..{st.text_len - 1})."
            )
        if ti.ndim == 1:
            return ti
        n = ti.shape[0]
        per_branch = st.batch // 2 if st.cfg_doubled else st.batch
        if per_branch % n:
            raise ConfigError(
                f"prompt= lists {n} prompts but the model call has batch {st.batch}"
                f"{' (CFG-doubled)' if st.cfg_doubled else ''}; pass the prompts of this run, in order."
            )
        full = ti.repeat_interleave(per_branch // n, dim=0)  # num_images_per_prompt copies
        if st.cfg_doubled:
            full = torch.cat([full, full])  # the uncond rows use the positions of their prompt
        return full[self._rows]

    def _end(self, module: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if self._active and self.skipping:
            for b in self._gap_blocks:
                if b not in self._ran:
                    self.rec.gaps.append((self.state.step, b))
        self.state.scratch.clear()
        self._active = False

    def _mark_ran(self, block: int) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            self._ran.add(block)

        return hook

    # -- tensor sites ----------------------------------------------------------------------------
    def _site_pre(self, spec: SiteSpec) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if self._active:
                self._keep(spec, spec.get(self.state, args, kwargs, None))

        return hook

    def _site_post(self, spec: SiteSpec) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            if self._active:
                self._keep(spec, spec.get(self.state, args, kwargs, out))

        return hook

    def _keep(self, spec: SiteSpec, x: torch.Tensor | None) -> None:
        if x is None:
            return
        x = x.detach()[self._rows]
        dims = spec.dims
        ti = self._call_index
        if spec.stream == "txt" and ti is not None and dims[1] == "token":
            ti = ti.to(x.device)
            x = x.index_select(1, ti) if ti.ndim == 1 else x.gather(1, ti[:, :, None].expand(-1, -1, x.shape[-1]))
        if self.reduce.mean_img_tokens and spec.stream == "img":
            if dims[1:] == ("token", "channel"):
                x, dims = x.mean(dim=1), ("batch", "channel")
            elif dims[1:] == ("channel", "height", "width"):
                x, dims = x.mean(dim=(2, 3)), ("batch", "channel")
        self._put(spec.name, x, dims)

    # -- attention maps --------------------------------------------------------------------------
    def _capture_proj(self, key: tuple) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            if self._active:
                self.state.scratch[key] = out.detach()

        return hook

    def _capture_kwargs(self, k: int) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if self._active:
                self.state.scratch[(k, "kwargs")] = kwargs

        return hook

    def _lse_open(self, k: int) -> Callable:
        """Pre-hook: intercept the module's SDPA call to take its row log-sum-exp (fast maps)."""

        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if self._active and k not in self._lse_caps and compat.function_modes_usable():
                cap = LSECapture()
                cap.__enter__()
                self._lse_caps[k] = cap

        return hook

    def _lse_close(self, k: int) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            cap = self._lse_caps.pop(k, None)
            if cap is None:
                return
            _exit_mode(cap)
            if self._active and cap.result is not None and cap.sdpa_calls == 1:
                self.state.scratch[(k, "lse")] = cap.result

        return hook

    def _close_all_lse(self) -> None:
        for k in list(self._lse_caps)[::-1]:
            _exit_mode(self._lse_caps.pop(k))

    def _maps(self, k: int, spec: AttnSpec, kinds: list[str]) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            if not self._active:
                return
            st = self.state
            needed = [(k, "k", i) for i in range(len(spec.k_parts))]
            if any(key not in st.scratch for key in needed):
                if self.skipping:  # a cache hook returned a stored attention output: a gap, not an error
                    return
                raise RuntimeError(
                    f"latentlens did not see the key projections of {spec.prefix}; the attention processor "
                    "does not call to_k/add_k_proj (or to_qkv when fused). Please report this model/processor."
                )
            with torch.no_grad():
                maps = quadrant_maps(spec, st, k, st.scratch.get((k, "kwargs"), kwargs), kinds, self._rows,
                                     heads=self.heads, text_index=self._call_index, lse=st.scratch.get((k, "lse")))
            for key in list(st.scratch):
                if key[0] == k:
                    del st.scratch[key]
            for kind, m in maps.items():
                self._keep_map(f"{spec.prefix}.{kind}", spec.quadrants[kind], m)

        return hook

    def _keep_map(self, name: str, streams: tuple[str, str], m: torch.Tensor) -> None:
        dims = ("batch", "query", "key") if self.heads == "mean" else ("batch", "head", "query", "key")
        q_stream, k_stream = streams
        grid = self.state.grid
        if self.reduce.pool > 1:
            if grid is None:
                raise ConfigError(f"reduce pool={self.reduce.pool} needs the image grid, unknown for this model call.")
            m = _pool_map(m, grid, self.reduce.pool, q_stream == "img", k_stream == "img")
        if self.reduce.mean_img_tokens and q_stream == "img":
            m = m.mean(dim=-2)
            dims = dims[:-2] + ("key",)
        self._put(name, m, dims)

    # -- storage ---------------------------------------------------------------------------------
    def _put(self, name: str, x: torch.Tensor, dims: tuple[str, ...]) -> None:
        st = self.state
        if x.is_meta:  # a size plan (latentlens.size_plan) runs the model on the meta device: shapes only
            y = x.to(dtype=self.dtype)
        else:
            y = x.to(device="cpu", dtype=self.dtype)
            if y.data_ptr() == x.data_ptr():
                y = y.clone()
        # A NaN/inf anywhere makes the sum non-finite, so one reduction screens the tensor;
        # the full element-wise check runs only when the screen fires (or the sum overflowed).
        if (
            name not in self._warned
            and not y.is_meta
            and y.is_floating_point()
            and not bool(torch.isfinite(y.sum()))
            and not bool(torch.isfinite(y).all())
        ):
            self._warned.add(name)
            warnings.warn(
                f"latentlens: NaN or inf in {name!r} at step {st.step} (timestep {st.timestep:g}); "
                "later steps of this site are not checked again.",
                RuntimeWarning,
                stacklevel=2,
            )
        self._dims[name] = dims
        order = _CTX_ORDER.get(st.context, 1)
        if self.reduce.mean_steps:
            acc = self._sums[name].setdefault(order, [None, 0])
            acc[0] = y.double() if acc[0] is None else acc[0] + y.double()
            acc[1] += 1
        else:
            self._store[name].setdefault(st.step, []).append((order, y))

    def finalize(self) -> Recording:
        rec = self.rec
        n_steps = self.tracker.n_steps
        self.steps.check(n_steps)
        steps = sorted(self._timesteps)
        rec.steps = steps
        rec.timesteps = [self._timesteps[s] for s in steps]
        for name in self.names:
            if name not in self._dims:
                continue  # e.g. a block skipped at every step
            if self.reduce.mean_steps:
                parts = sorted(self._sums[name].items())
                data = torch.cat([(acc[0] / acc[1]).to(self.dtype) for _, acc in parts], dim=0)[None]
            else:
                per_step = self._store[name]
                like = next(iter(per_step.values()))
                stacked = []
                for s in steps:
                    items = per_step.get(s)
                    if items is None:  # skipped by a cache (allow_caching=True): NaN
                        items = [(o, torch.full_like(t, float("nan"))) for o, t in like]
                    parts = [t for _, t in sorted(items, key=lambda it: it[0])]
                    stacked.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))  # no extra copy
                data = torch.stack(stacked)
            rec._data[name] = data
            rec._dims[name] = ("step",) + self._dims[name]
        rec.names = [n for n in self.names if n in rec._data]
        rec.meta = {
            "adapter": self.adapter.name,
            "model_class": type(self.transformer).__name__,
            "config": dict(getattr(self.transformer, "config", {}) or {}),
            "cfg": self.cfg,
            "heads": self.heads,
            "reduce": self.reduce.as_dict(),
            "tokens": None if self.text_index is None else self.text_index.tolist(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "skipping_hooks": self.skipping,
        }
        rec._done = True
        return rec


def _pool_map(m: torch.Tensor, grid: tuple[int, int], k: int, pool_q: bool, pool_k: bool) -> torch.Tensor:
    """Average-pool the image axes of a map ``[..., q, k]`` over ``k × k`` patches of the token grid."""
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


class record:  # noqa: N801 - used as a function-like context manager
    """Record named activations and exact attention maps while a pipeline (or transformer) runs.

    Args:
        target: a diffusers pipeline (with ``.transformer``) or a bare transformer module.
        sites: names to record — a glob (``"blocks.*.resid_out.*"``), a list, or ``callable(name) -> bool``.
            Map names (``blocks.3.attn.img2txt``) may be given here too. Default: ``"blocks.*.resid_out.*"``
            when ``attention`` is not given either, else nothing.
        attention: map names to record (glob / list / callable), e.g. ``"blocks.*.attn.img2txt"``.
        steps: transformer calls to keep: None (all), int, list, range or slice (non-negative).
        cfg: "cond" | "uncond" | "both": the classifier-free-guidance branch to keep when the pipeline
            doubles the batch as ``[uncond, cond]`` (SD3, toy, PixArt) or calls the transformer inside
            ``cache_context("cond"/"uncond")`` (Flux true CFG). Without CFG every row is kept.
        tokens: text tokens to keep: indices into ``encoder_hidden_states``, or words (then pass
            ``prompt=`` — the words are located in it with the pipeline's tokenizers' offsets mapping;
            with a list of prompts, per row, each prompt giving the same number of tokens), applied to
            text-stream sites, the key axis of ``*2txt`` maps and the query axis of ``txt2*``.
        reduce: capture-time reductions, a string, list or dict of: ``"mean_img_tokens"`` (mean over the
            image tokens of image-stream sites, and over the image *query* axis of maps), ``"mean_steps"``
            (running mean over the recorded steps; the step axis keeps length 1), ``"pool=N"`` (average
            pooling of the image axes of maps over N×N patches of the token grid).
        dtype: dtype of the stored tensors (on CPU).
        heads: "mean" (head-averaged maps) or "all" (``[step, batch, head, q, k]``).
        store: a :class:`latentlens.store.RunStore` (anything with ``add_recording(rec)``); written on
            successful exit, after which ``rec[name]`` reads lazily from the store and the
            in-memory copy is freed (``rec.sample_ids`` says which samples it became).
        allow_caching: record even when diffusers caching hooks skip blocks/steps; skipped
            (step, block) pairs are listed in ``rec.gaps`` and their maps are NaN.

    Example::

        with record(pipe, sites="blocks.*.resid_out.img", steps=range(0, 28, 4)) as rec:
            pipe(prompts)
        rec["blocks.5.resid_out.img"]  # [7, len(prompts), image_tokens, width]
    """

    def __init__(
        self,
        target: Any,
        sites: Sites = None,
        attention: Sites = None,
        steps: Steps = None,
        cfg: str = "cond",
        tokens: int | str | Sequence[int | str] | None = None,
        reduce: Any = None,
        dtype: torch.dtype = torch.float32,
        heads: str = "mean",
        store: Any = None,
        *,
        allow_caching: bool = False,
        prompt: str | Sequence[str] | None = None,
    ) -> None:
        if sites is None and attention is None:
            sites = "blocks.*.resid_out.*"
        self._recorder = _Recorder(target, sites, attention, steps, cfg, tokens, reduce, dtype, heads, store,
                                   allow_caching, prompt)

    def __enter__(self) -> Recording:
        self._recorder.install()
        return self._recorder.rec

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._recorder.remove()
        if exc_type is None:
            rec = self._recorder.finalize()
            if self._recorder.store is not None:
                sample_ids = self._recorder.store.add_recording(rec)
                if sample_ids is not None and hasattr(self._recorder.store, "read"):
                    rec._move_to_store(self._recorder.store, sample_ids)


__all__ = ["Recording", "record", "site_names", "word_token_indices"]
