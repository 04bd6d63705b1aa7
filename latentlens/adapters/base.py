"""What every architecture adapter provides, and small helpers to describe sites.

An adapter turns one transformer class into a list of named *sites* (a tensor
read — and optionally written — by a torch hook on one module) and named
*attention specs* (where a block's queries and keys come from), and names the
rest of what its pipelines imply: the text segments (tokenizer, offset, length),
site widths and the :class:`~latentlens.adapters.generation.EditModel` that
encodes prompts, predicts, (de)noises and decodes. The recorder, the
interventions, the editor and the dashboard only talk to these descriptions, so
a new architecture is one new file in ``latentlens/adapters/`` (see
``docs/design.md``, "Adding an architecture").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from collections.abc import Callable

import torch
from torch import nn

from latentlens.names import is_map

if TYPE_CHECKING:
    from latentlens.adapters.generation import EditModel

Getter = Callable[["CallState", tuple, dict, Any], torch.Tensor]
Setter = Callable[["CallState", tuple, dict, Any, torch.Tensor], Any]


@dataclass
class CallState:
    """Facts about the transformer call in flight, set by the step tracker before any block runs."""

    step: int = -1  # index of this call among the calls of the same cache context
    context: str | None = None  # diffusers cache context ("cond"/"uncond") or None
    rows: slice | None = None  # batch rows kept for recording (CFG branch selection)
    cfg_doubled: bool = False  # the batch is [uncond, cond] (classifier-free guidance by concatenation)
    batch: int = 0
    text_len: int = 0  # text tokens in the joint sequence
    grid: tuple[int, int] | None = None  # image tokens as (rows, cols)
    timestep: float = float("nan")
    scratch: dict = field(default_factory=dict)  # per-call captures (q/k, rotary embeddings, masks)


@dataclass(frozen=True)
class SiteSpec:
    """One recordable tensor.

    ``hook`` is ``"pre"`` (read from the module's inputs) or ``"post"`` (from its output);
    ``get`` returns the full-batch tensor (first dim batch), ``set`` (None = read-only)
    returns the new inputs ``(args, kwargs)`` for a pre hook or the new output for a post hook.
    ``dims`` names the per-call axes (starting with ``"batch"``); ``stream`` is "img", "txt" or None.
    """

    name: str
    module: nn.Module
    hook: str
    get: Getter
    set: Setter | None
    dims: tuple[str, ...]
    stream: str | None = None


@dataclass(frozen=True)
class QKPart:
    """A slice of the joint query or key sequence: projection module (+ optional fused chunk) and its norm."""

    stream: str  # "img", "txt" or "joint" (Flux single-stream: split into txt|img by text length)
    proj: nn.Module
    chunk: int | None = None  # index into proj output chunk(3) for fused qkv projections
    norm: nn.Module | None = None


@dataclass(frozen=True)
class AttnSpec:
    """Where one attention module's queries and keys come from, in the order of the joint sequence.

    ``quadrants`` maps a map kind (e.g. "img2txt") to (query stream, key stream).
    ``rope``: apply the ``image_rotary_emb`` keyword argument of the attention call to the joint q/k.
    ``mask_kwarg``: name of an additive/boolean mask keyword argument of the attention call.
    ``grid``: this module's image-token grid ``(rows, cols)`` for the call in flight, where it is not
    the call's ``CallState.grid`` (a UNet's downsampled levels); None = the call's grid.
    """

    prefix: str  # e.g. "blocks.3.attn"
    block: int
    module: nn.Module
    heads: int
    head_dim: int
    q_parts: tuple[QKPart, ...]
    k_parts: tuple[QKPart, ...]
    quadrants: dict[str, tuple[str, str]]
    rope: bool = False
    mask_kwarg: str | None = None
    scale: float | None = None
    grid: Callable[[CallState], tuple[int, int] | None] | None = None

    def image_grid(self, state: CallState) -> tuple[int, int] | None:
        """The image-token grid of this attention module in the call described by ``state``."""
        return self.grid(state) if self.grid is not None else state.grid


#: ``modulate(tokens, temb) -> (normed tokens, carry)``: the text stream's AdaLN in one block
Modulate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]]
#: ``update(tokens, attn_out, normed, carry) -> tokens after the block``: output projection, gate, feed-forward
Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class ConceptBlock:
    """How concept tokens pass one joint block exactly as the text stream does (ConceptAttention).

    The concept tokens get the text stream's modulation (``modulate``), its q/k/v projections and
    qk-norms (``txt_q``/``txt_k``/``txt_v``), attend to ``[image tokens, concept tokens]`` (never to
    the real text, and no real token attends to them), and ``update`` (the text stream's output
    projection, gate and feed-forward) gives their residual stream after the block; ``update`` is
    None where the text stream ends (SD3's last, ``context_pre_only`` block).
    ``img_q``/``img_k``/``img_v`` are the image stream's projections (stream ``"joint"``: split at
    the text length); ``img_out`` is the module whose first input (or, with ``img_out_joint``, whose
    output, split at the text length) is the image tokens' attention output ``[batch, token, heads *
    head_dim]`` before any output projection. ``rope``: apply the block's ``image_rotary_emb``
    (the image rows to image tokens, the first text row to every concept token); ``rope_position``
    is its positional index in the block's forward, ``temb_position`` that of ``temb`` (the
    conditioning vector ``modulate`` receives, rows of the kept CFG branch only).
    """

    prefix: str  # e.g. "blocks.3.attn"
    block: int
    module: nn.Module  # the transformer block; its forward kwargs carry ``temb`` (and the RoPE)
    heads: int
    head_dim: int
    img_q: QKPart
    img_k: QKPart
    img_v: QKPart
    txt_q: QKPart
    txt_k: QKPart
    txt_v: QKPart
    img_out: nn.Module
    modulate: Modulate
    update: Update | None
    img_out_joint: bool = False
    rope: bool = False
    rope_position: int = 3
    temb_position: int = 2
    scale: float | None = None


def _arg(args: tuple, kwargs: dict, name: str, pos: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > pos:
        return args[pos]
    return None


def tensor_arg(args: tuple, kwargs: dict, name: str, pos: int) -> torch.Tensor:
    """The forward's tensor argument ``name`` (keyword, or positional ``pos``); a clear error if absent."""
    value = _arg(args, kwargs, name, pos)
    if not torch.is_tensor(value):
        raise RuntimeError(
            f"latentlens expected the tensor argument {name!r} in this forward call and got {type(value).__name__}; "
            "the model's calling convention differs from the one its adapter knows. Please report this model."
        )
    return value


def arg_site(
    name: str,
    module: nn.Module,
    arg: str,
    pos: int,
    dims: tuple[str, ...],
    stream: str | None = None,
    settable: bool = True,
) -> SiteSpec:
    """A site read from the keyword (or positional) argument ``arg`` of ``module``'s forward."""

    def get(state: CallState, args: tuple, kwargs: dict, out: Any) -> torch.Tensor:
        return _arg(args, kwargs, arg, pos)

    def set_(state: CallState, args: tuple, kwargs: dict, out: Any, value: torch.Tensor) -> Any:
        if arg in kwargs or len(args) <= pos:
            kwargs = dict(kwargs)
            kwargs[arg] = value
        else:
            args = args[:pos] + (value,) + args[pos + 1 :]
        return args, kwargs

    return SiteSpec(name, module, "pre", get, set_ if settable else None, dims, stream)


def out_site(
    name: str,
    module: nn.Module,
    index: int | None,
    dims: tuple[str, ...],
    stream: str | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SiteSpec:
    """A site read from ``module``'s output (element ``index`` of a tuple output, or the whole output).

    With ``transform`` (e.g. a reshape) the site is read-only.
    """

    def get(state: CallState, args: tuple, kwargs: dict, out: Any) -> torch.Tensor:
        value = out if index is None else out[index]
        return transform(value) if transform is not None else value

    def set_(state: CallState, args: tuple, kwargs: dict, out: Any, value: torch.Tensor) -> Any:
        if index is None:
            return value
        items = list(out)
        items[index] = value
        return type(out)(items) if isinstance(out, tuple) else items

    return SiteSpec(name, module, "post", get, None if transform is not None else set_, dims, stream)


def joint_out_site(name: str, module: nn.Module, part: str, dims: tuple[str, ...]) -> SiteSpec:
    """A site read from a joint ``[text, image]`` output tensor, split at the call's text length."""

    def get(state: CallState, args: tuple, kwargs: dict, out: Any) -> torch.Tensor:
        t = state.text_len
        return out[:, :t] if part == "txt" else out[:, t:]

    def set_(state: CallState, args: tuple, kwargs: dict, out: Any, value: torch.Tensor) -> Any:
        t = state.text_len
        return torch.cat([value, out[:, t:]], dim=1) if part == "txt" else torch.cat([out[:, :t], value], dim=1)

    return SiteSpec(name, module, "post", get, set_, dims, part)


TOKENS = ("batch", "token", "channel")


@dataclass(frozen=True)
class TextSegment:
    """One text encoder's stretch of ``encoder_hidden_states``: tokens ``offset .. offset + length``.

    ``tokenizer`` made those tokens; ``length`` is the most tokens it contributes (its truncation
    length). The recorder locates words with it and the editor diffs prompts with it, so both truncate
    the same way.
    """

    tokenizer: Any
    offset: int
    length: int


class Adapter:
    """Base class of the per-architecture adapters.

    Subclasses set :attr:`transformer_classes` and implement :meth:`sites`, :meth:`attention`,
    :meth:`begin_call` and, where the pipeline doubles the batch, :meth:`cfg_doubled`.
    """

    #: class names of the transformers this adapter handles (matched against the class hierarchy)
    transformer_classes: tuple[str, ...] = ()
    #: class names of the pipelines this adapter is for; empty = any pipeline around such a transformer
    #: (an adapter that names pipelines is preferred over one that does not)
    pipeline_classes: tuple[str, ...] = ()
    #: the hook-layout family, written into run manifests
    name: str = "base"
    #: the pipeline attribute that holds the denoiser this adapter hooks (``pipe.transformer``,
    #: ``pipe.unet``); the adapter's ``transformer`` is that module whatever its kind
    denoiser_attribute: str = "transformer"
    #: the :class:`~latentlens.adapters.generation.EditModel` subclass that generates with this
    #: architecture (None: the editor does not support it)
    edit_model: ClassVar[type[EditModel] | None] = None
    #: config key of the text encoder output width (``text.tokens``)
    text_width_key: str = "joint_attention_dim"
    #: pipeline subfolders holding the tokenizer of each text segment, in segment order
    tokenizer_subfolders: tuple[str, ...] = ("tokenizer",)

    def __init__(self, transformer: nn.Module, pipe: Any = None) -> None:
        self.transformer = transformer
        self.pipe = pipe

    # -- to implement -------------------------------------------------------------------------
    def sites(self) -> list[SiteSpec]:
        """Every recordable tensor site, in the documented stable order."""
        raise NotImplementedError

    def attention(self) -> list[AttnSpec]:
        """Every attention module whose maps can be recorded."""
        return []

    def begin_call(self, state: CallState, args: tuple, kwargs: dict) -> None:
        """Fill ``state`` (batch, text_len, grid, timestep) from the transformer's forward inputs."""
        raise NotImplementedError

    def cfg_doubled(self, args: tuple, kwargs: dict) -> bool:
        """True when this call's batch is ``[uncond, cond]`` (CFG by batch concatenation)."""
        return False

    def concept_blocks(self) -> list[ConceptBlock]:
        """The joint blocks concept tokens can pass, in execution order (empty: no joint text blocks)."""
        return []

    def concept_embed(self, states: torch.Tensor) -> torch.Tensor:
        """Text-encoder states ``[..., channel]`` to the first block's text-stream input (``context_embedder``)."""
        return self.transformer.context_embedder(states)

    def alias(self, name: str) -> str:
        """The canonical name of an alias (e.g. Flux's ``single_blocks.{j}``); other names unchanged."""
        return name

    def block_modules(self) -> list[nn.Module]:
        """The blocks in execution order (index = block number in names)."""
        raise NotImplementedError

    def block_probe(self, index: int) -> nn.Module:
        """A module that runs exactly when block ``index`` really computes (for gap detection)."""
        raise NotImplementedError

    def text_segments(self, max_sequence_length: int | None = None) -> list[TextSegment]:
        """Which tokenizer produced which text tokens (``max_sequence_length``: the T5-style encoder's length)."""
        tok = getattr(self.pipe, "tokenizer", None)
        if tok is None:
            return []
        length = max_sequence_length or getattr(self.pipe, "tokenizer_max_length", None) or tok.model_max_length
        return [TextSegment(tok, 0, int(length))]

    def site_width(self, name: str) -> int | None:
        """Channel width of a token site (``text.tokens``, ``text.pooled``, block sites); None for others.

        Example: ``adapter_for(sd3_pipe).site_width("text.pooled")`` → 2048.
        """
        config = getattr(self.transformer, "config", None) or {}
        if name == "text.tokens":
            value = config.get(self.text_width_key)
        elif name == "text.pooled":
            value = config.get("pooled_projection_dim")
        elif name.startswith("blocks.") and not is_map(name):
            heads, head_dim = config.get("num_attention_heads"), config.get("attention_head_dim")
            value = int(heads) * int(head_dim) if heads and head_dim else None
        else:
            value = None
        return int(value) if value else None

    @classmethod
    def offline_tokenizer(cls, model_id: str, pipeline_class: str) -> Any:
        """The tokenizer of the first text segment of a saved pipeline folder, or None (no download)."""
        from transformers import AutoTokenizer

        folder = Path(model_id).expanduser()
        sub = cls.tokenizer_subfolders[0] if cls.tokenizer_subfolders else None
        if sub is None or not (folder / sub).is_dir():
            return None
        return AutoTokenizer.from_pretrained(str(folder / sub), local_files_only=True)

    # -- shared helpers ------------------------------------------------------------------------
    @staticmethod
    def batch_halves_equal(x: torch.Tensor | None) -> bool:
        """Heuristic for pipelines without ``do_classifier_free_guidance``: the latents are duplicated."""
        if x is None or x.shape[0] % 2:
            return False
        half = x.shape[0] // 2
        return bool(torch.equal(x[:half], x[half:]))

    def pipe_cfg_flag(self) -> bool | None:
        """The pipeline's own ``do_classifier_free_guidance`` flag, if it has one."""
        if self.pipe is None:
            return None
        try:
            value = self.pipe.do_classifier_free_guidance
        except Exception:  # the property reads state that only exists during a call
            return None
        return bool(value) if isinstance(value, (bool, int)) else None


def timestep_value(ts: Any) -> float:
    """The transformer call's timestep as a float (the first row's; NaN when absent)."""
    if torch.is_tensor(ts):
        return float("nan") if ts.is_meta else float(ts.flatten()[0])  # meta: a size plan, no values
    return float(ts) if ts is not None else float("nan")


class PatchGridAdapter(Adapter):
    """An adapter whose transformer takes latents ``[batch, channel, height, width]`` cut into ``config.patch_size``
    patches and whose pipelines double the batch as ``[uncond, cond]`` for CFG (SD3, toy, PixArt)."""

    #: positional index of ``timestep`` in the transformer's ``forward``
    timestep_position: int = 3

    def begin_call(self, state: CallState, args: tuple, kwargs: dict) -> None:
        x = tensor_arg(args, kwargs, "hidden_states", 0)  # [batch, channel, height, width]
        ctx = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        at = self.timestep_position
        ts = kwargs.get("timestep", args[at] if len(args) > at else None)
        p = self.transformer.config.patch_size
        state.batch = x.shape[0]
        state.grid = (x.shape[-2] // p, x.shape[-1] // p)
        state.text_len = ctx.shape[1] if ctx is not None else 0
        state.timestep = timestep_value(ts)

    def cfg_doubled(self, args: tuple, kwargs: dict) -> bool:
        x = tensor_arg(args, kwargs, "hidden_states", 0)
        flag = self.pipe_cfg_flag()
        if flag is None:
            return self.batch_halves_equal(x)
        return flag and x.shape[0] % 2 == 0
