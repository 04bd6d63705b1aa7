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
and reductions happen at capture time, so only what was asked for is kept in memory. This module
only orchestrates; the parts live in :mod:`latentlens.capture` (see ``docs/design.md``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch

from latentlens.adapters import adapter_for, compiled_parts, split_target
from latentlens.adapters.base import AttnSpec, CallState, SiteSpec
from latentlens.adapters.hooks import HookSet, StepTracker, cfg_rows, check_caching
from latentlens.capture.accumulator import Accumulator
from latentlens.capture.concepts import ConceptCapture
from latentlens.capture.maps import MapCapture
from latentlens.capture.options import CfgBranch, Heads, Reduce, ReduceSpec, check_cfg, check_heads
from latentlens.capture.recording import Recording
from latentlens.capture.sites import select_site
from latentlens.concepts import check_concepts, concept_states
from latentlens.errors import ConfigError
from latentlens.names import (
    Sites,
    Steps,
    StepSelection,
    block_of,
    concept_names,
    is_concept_map,
    is_map,
    recordable_names,
    select_names,
)
from latentlens.text import TokenSpec, resolve_tokens, word_token_indices


#: steps the last recording of each transformer kept (sizes the next one's step buffers, see Recorder._expected_steps)
_LAST_KEPT: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


class RecordingSink(Protocol):
    """Where a finished recording is written (a :class:`latentlens.RunStore`)."""

    def add_recording(self, rec: Recording) -> list[int] | None: ...


def site_names(target: Any) -> list[str]:
    """Every recordable name for this pipeline or transformer, in a stable order.

    Example: ``site_names(pipe)[:3]`` → ``['latents', 'text.tokens', 'text.pooled']``.
    """
    return recordable_names(adapter_for(target))


class Recorder:
    """The hooks of one :func:`record` block: installs them, routes captures, builds the :class:`Recording`."""

    def __init__(
        self,
        target: Any,
        sites: Sites,
        attention: Sites,
        steps: Steps,
        cfg: CfgBranch,
        tokens: TokenSpec,
        reduce: ReduceSpec,
        dtype: torch.dtype,
        heads: Heads,
        store: RecordingSink | None,
        allow_caching: bool,
        prompt: str | Sequence[str] | None = None,
        concepts: Sequence[str] | None = None,
    ) -> None:
        self.cfg = check_cfg(cfg)
        self.heads = check_heads(heads)
        self.adapter = adapter_for(target)
        self.transformer, self.pipe = split_target(target)
        self.compiled = compiled_parts(target)
        self.dtype = dtype
        self.store = store
        self.allow_caching = allow_caching
        self.steps = StepSelection(steps)
        self.reduce = Reduce(reduce)
        self.text_index = resolve_tokens(tokens, self.adapter, prompt)
        self.tokens = tokens

        valid = recordable_names(self.adapter)
        self.concepts = None if concepts is None else check_concepts(concepts)
        if self.concepts is not None:
            extra = concept_names(self.adapter)
            if not extra:
                raise ConfigError(
                    f"concepts= needs joint text blocks (SD3, SD3.5, Flux, the toy model); the {self.adapter.name!r} "
                    f"architecture ({type(self.transformer).__name__}) has none. Record its img2txt/cross-attention "
                    "maps of prompt words instead."
                )
            valid = valid + extra
            if sites is None and attention is None:
                attention = "blocks.*.attn.img2concept*"
        else:
            self._refuse_concept_names(sites, attention)
        alias = self.adapter.alias
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
        self.rec, self.accumulator = self._empty_recording()
        self.maps = MapCapture(self, self.heads, self.reduce, self._put)
        self.concept_capture = self._concept_capture(wanted)
        self._timesteps: dict[int, float] = {}
        self._expected: int | None = None  # steps the recording will keep, 0 = unknown (set at the first step)
        self._ran: set[int] = set()
        self._gap_blocks: list[int] = []
        self.skipping: list[str] = []  # names of diffusers hooks that may skip blocks
        self.active = False
        self.rows: slice | None = None
        self.call_index: torch.Tensor | None = None

    @staticmethod
    def _refuse_concept_names(sites: Sites, attention: Sites) -> None:
        for spec in (sites, attention):
            items = [spec] if isinstance(spec, str) else (list(spec) if isinstance(spec, (list, tuple)) else [])
            for item in items:
                if isinstance(item, str) and "concept" in item:
                    raise ConfigError(
                        f"{item!r} is a concept map; pass the concept words too, e.g. "
                        "record(pipe, attention='blocks.*.attn.img2concept', concepts=['circle', 'background'])."
                    )

    def _concept_capture(self, wanted: set[str]) -> ConceptCapture | None:
        """Encode the concepts (before any model work) and plan which blocks give which concept maps."""
        if self.concepts is None:
            return None
        by_block: dict[int, list[str]] = {}
        blocks = self.adapter.concept_blocks()
        for cb in blocks:
            kinds = [n.rsplit(".", 1)[-1] for n in self.names if n.startswith(cb.prefix + ".") and is_concept_map(n)]
            if kinds:
                by_block[cb.block] = kinds
        if not by_block:
            return None
        if self.pipe is None:
            raise ConfigError(
                "concepts= needs the pipeline (its tokenizer and text encoder encode the concepts); pass the pipeline, "
                "not a bare transformer."
            )
        with torch.no_grad():
            states = concept_states(self.pipe, self.adapter, self.concepts)  # [concept, channel]
            param = next(self.transformer.parameters())
            embeds = self.adapter.concept_embed(states.to(param.device, param.dtype))  # [concept, width]
        return ConceptCapture(self, blocks, by_block, embeds, self.heads, self.reduce, self._put, self._suspended)

    @contextlib.contextmanager
    def _suspended(self) -> Iterator[None]:
        """The recorder's hooks ignore what runs inside (the concept stream calling the model's modules)."""
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active

    # -- install / remove -------------------------------------------------------------------------
    def install(self) -> None:
        self.skipping = check_caching(self.transformer, self.allow_caching)
        try:
            self.hooks.run_eagerly(self.compiled)
            self.tracker.install(self.hooks)
            self.hooks.pre(self.transformer, self._begin)
            for site in self.site_specs.values():
                if site.hook == "pre":
                    self.hooks.pre(site.module, self._site_pre(site))
                else:
                    self.hooks.post(site.module, self._site_post(site))
            self.maps.install_all(self.hooks, self.map_specs)
            if self.concept_capture is not None:
                self.concept_capture.install(self.hooks)
            if self.skipping:
                blocks = sorted({b for b in (block_of(n) for n in self.names) if b is not None})
                for b in blocks:
                    self.hooks.post(self.adapter.block_probe(b), self._mark_ran(b))
                self._gap_blocks = blocks
            self.hooks.post(self.transformer, self._end)
        except BaseException:
            self.hooks.remove()
            raise

    def remove(self) -> None:
        self.hooks.remove()
        self.maps.close_all()

    def release(self) -> None:
        """Let go of the recording and of the captured data once the recording is handed over.

        The captures call back into the recorder, so it sits in reference cycles and lives until Python's next
        garbage collection; without this the recording's data (gigabytes at real sizes) would live as long,
        even after the caller dropped it. The caller's recording keeps its data.
        """
        self.rec, self.accumulator = self._empty_recording()
        self.state.scratch.clear()

    def _empty_recording(self) -> tuple[Recording, Accumulator]:
        """A recording with nothing in it yet, and the accumulator its captures go into."""
        rec = Recording()
        rec.cfg = self.cfg
        return rec, Accumulator(self.dtype, mean_steps=self.reduce.mean_steps)

    # -- per call --------------------------------------------------------------------------------
    @property
    def state(self) -> CallState:
        return self.tracker.state

    def _begin(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.maps.close_all()  # left open only if an earlier call was interrupted (BaseException)
        st = self.state
        rows = cfg_rows(st, self.cfg)
        self.active = rows is not None and st.step in self.steps
        self.rows = rows
        self._ran = set()
        if self.active:
            self._timesteps.setdefault(st.step, st.timestep)
            self.call_index = self._index_for_call(st)
            if self._expected is None:
                self._expected = self._expected_steps()
            left = self._expected - len(self._timesteps) + 1  # this step and the ones after it
            self.accumulator.rows_left = left if left > 0 else None

    def _expected_steps(self) -> int:
        """How many steps this recording keeps, when the run says so in advance (0 = unknown).

        From the pipeline's own step count (diffusers pipelines set ``_num_timesteps`` before their
        loop), an explicit ``steps=`` list, or else the previous recording of the same transformer (a
        bare transformer driven by the caller's own loop, recorded again and again). It only sizes the
        step buffers: a wrong guess costs one copy at the end, never a wrong value.
        """
        total = getattr(self.pipe, "_num_timesteps", None) if self.pipe is not None else None
        if isinstance(total, int) and not isinstance(total, bool) and total > 0:
            return sum(1 for s in range(total) if s in self.steps)
        if self.steps.explicit is not None:
            return len(self.steps.explicit)
        return _LAST_KEPT.get(self.transformer, 0)

    def _index_for_call(self, st: CallState) -> torch.Tensor | None:
        """The text-token selection for this call's kept rows: ``[token]`` or ``[batch, token]``."""
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
        return full[self.rows]

    def _end(self, module: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if self.active and self.skipping:
            for b in self._gap_blocks:
                if b not in self._ran:
                    self.rec.gaps.append((self.state.step, b))
        self.state.scratch.clear()
        self.active = False

    def _mark_ran(self, block: int) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            self._ran.add(block)

        return hook

    # -- tensor sites ----------------------------------------------------------------------------
    def _site_pre(self, spec: SiteSpec) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if self.active:
                self._keep(spec, spec.get(self.state, args, kwargs, None))

        return hook

    def _site_post(self, spec: SiteSpec) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict, out: Any) -> None:
            if self.active:
                self._keep(spec, spec.get(self.state, args, kwargs, out))

        return hook

    def _keep(self, spec: SiteSpec, x: torch.Tensor | None) -> None:
        if x is None:
            return
        kept, dims = select_site(spec, x, self.rows, self.call_index, self.reduce)
        self._put(spec.name, kept, dims)

    def _put(self, name: str, x: torch.Tensor, dims: tuple[str, ...]) -> None:
        self.accumulator.put(name, x, dims, self.state)

    # -- the result ------------------------------------------------------------------------------
    def finalize(self) -> Recording:
        rec = self.rec
        self.steps.check(self.tracker.n_steps)
        steps = sorted(self._timesteps)
        _LAST_KEPT[self.transformer] = len(steps)
        rec.steps = steps
        rec.timesteps = [self._timesteps[s] for s in steps]
        for name in self.names:
            stacked = self.accumulator.stacked(name, steps)
            if stacked is not None:  # None: e.g. a block skipped at every step
                rec.set_data(name, *stacked)
        rec.finish(
            self.names,
            {
                "adapter": self.adapter.name,
                "model_class": type(self.transformer).__name__,
                "config": dict(getattr(self.transformer, "config", {}) or {}),
                "cfg": self.cfg,
                "heads": self.heads,
                "reduce": self.reduce.as_dict(),
                "tokens": None if self.text_index is None else self.text_index.tolist(),
                "concepts": self.concepts,
                "dtype": str(self.dtype).replace("torch.", ""),
                "skipping_hooks": self.skipping,
                "transformer_calls": sum(self.tracker.counts.values()),
            },
        )
        return rec


class record:
    """Record named activations and exact attention maps while a pipeline (or transformer) runs.

    Args:
        target: a diffusers pipeline (with ``.transformer``, or ``.unet``) or a bare transformer (or UNet) module.
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
        heads: "mean" (head-averaged maps) or "all" (``[step, batch, head, query, key]``).
        store: a :class:`latentlens.store.RunStore` (anything with ``add_recording(rec)``); written on
            successful exit, after which ``rec[name]`` reads lazily from the store and the
            in-memory copy is freed (``rec.sample_ids`` says which samples it became).
        allow_caching: record even when diffusers caching hooks skip blocks/steps; skipped
            (step, block) pairs are listed in ``rec.gaps`` and their maps are NaN.
        concepts: words to map (ConceptAttention, see :mod:`latentlens.concepts`), e.g.
            ``["circle", "background"]``: adds ``blocks.{i}.attn.img2concept`` (attention weights, softmax
            over the concepts) and ``blocks.{i}.attn.img2concept_out`` (image attention outputs · concept
            outputs), each ``[step, batch, image_token, concept]``, for every joint block (default when
            neither ``sites`` nor ``attention`` is given: all of them). The model's output is unchanged.

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
        cfg: CfgBranch = "cond",
        tokens: TokenSpec = None,
        reduce: ReduceSpec = None,
        dtype: torch.dtype = torch.float32,
        heads: Heads = "mean",
        store: RecordingSink | None = None,
        *,
        allow_caching: bool = False,
        prompt: str | Sequence[str] | None = None,
        concepts: Sequence[str] | None = None,
    ) -> None:
        if sites is None and attention is None and concepts is None:
            sites = "blocks.*.resid_out.*"  # the default: every block's residual outputs
        self._recorder = Recorder(
            target, sites, attention, steps, cfg, tokens, reduce, dtype, heads, store, allow_caching, prompt, concepts
        )

    def __enter__(self) -> Recording:
        self._recorder.install()
        return self._recorder.rec

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._recorder.remove()
        try:
            if exc_type is None:
                rec = self._recorder.finalize()
                if self._recorder.store is not None:
                    sample_ids = self._recorder.store.add_recording(rec)
                    if sample_ids is not None and hasattr(self._recorder.store, "read"):
                        rec.move_to_store(self._recorder.store, sample_ids)
        finally:
            self._recorder.release()  # the data lives exactly as long as the caller's recording


__all__ = ["Recorder", "Recording", "RecordingSink", "record", "site_names", "word_token_indices"]
