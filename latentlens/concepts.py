"""Concept maps (ConceptAttention): attention maps for arbitrary words, exact, without changing the model.

Each concept word is encoded by the pipeline's own text encoder (:func:`concept_states`); the
transformer's ``context_embedder`` turns it into one concept token, which then passes every joint
block as a text token would (:func:`concept_block`): the text stream's AdaLN modulation, q/k/v
projections and qk-norms, attention over ``[image tokens, concept tokens]`` (the concepts never see
the real text, and no real token attends to them), then the text stream's output projection, gate
and feed-forward. The model's own computation is untouched, so its output is bit-identical.

Per block, with image queries/keys/values ``q_x, k_x, v_x`` and attention outputs ``o_x`` of the
model, and the concepts' ``q_c, k_c, v_c``:

    o_c               = softmax(q_c [k_x; k_c]ᵀ · scale) [v_x; v_c]         (concept outputs)
    img2concept       = softmax over concepts of (q_x k_cᵀ · scale), head mean   [batch, image_token, concept]
    img2concept_out   = o_x · o_cᵀ (all heads concatenated)                      [batch, image_token, concept]

Only ``[image_token, concept]``-sized products are formed, so the extra memory is linear in the
number of image tokens. Example::

    with latentlens.record(pipe, attention="blocks.*.attn.img2concept_out", concepts=["circle", "background"]) as rec:
        pipe("a small red circle on a gray background")
    rec["blocks.3.attn.img2concept_out"].shape   # [step, batch, image_token, 2]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import torch

from latentlens.adapters.base import ConceptBlock, QKPart
from latentlens.attention import compute_dtype
from latentlens.errors import ConfigError


def check_concepts(concepts: Any) -> list[str]:
    """``concepts`` as a list of distinct, non-empty words (a clear error otherwise)."""
    if isinstance(concepts, str):
        concepts = [c for c in concepts.split(",")] if "," in concepts else [concepts]
    if not isinstance(concepts, (list, tuple)) or not concepts:
        raise ConfigError(f"concepts={concepts!r} must be a non-empty list of words, e.g. ['circle', 'background'].")
    out: list[str] = []
    for c in concepts:
        if not isinstance(c, str) or not c.strip():
            raise ConfigError(
                f"concepts={list(concepts)!r} holds the empty or non-text concept {c!r}; give each concept as a word."
            )
        if c.strip() in out:
            raise ConfigError(f"concepts={list(concepts)!r} lists {c.strip()!r} twice; give each concept once.")
        out.append(c.strip())
    return out


def concept_positions(adapter: Any, concept: str) -> list[int]:
    """Token positions of ``concept`` in its own encoding, one text segment at a time.

    A concept the tokenizer does not know (only unknown tokens), or that its segment truncates, is
    refused with a clear error: its encoding would not be the word.
    """
    segments = adapter.text_segments()
    if not segments:
        raise ConfigError(
            "concepts= needs the pipeline's tokenizer and text encoder to encode the concepts; pass the pipeline, "
            "not a bare transformer."
        )
    out: list[int] = []
    for seg in segments:
        tok = seg.tokenizer
        full = tok(concept, add_special_tokens=True, truncation=False)["input_ids"]
        if len(full) > seg.length:
            raise ConfigError(
                f"The concept {concept!r} needs {len(full)} tokens but the tokenizer keeps {seg.length}; its end "
                "would be truncated away. Use a shorter concept."
            )
        enc = tok(concept, return_offsets_mapping=True, truncation=True, max_length=seg.length)
        special = set(getattr(tok, "all_special_ids", []) or [])
        unk = getattr(tok, "unk_token_id", None)
        pos = [
            i
            for i, ((a, b), t) in enumerate(zip(enc["offset_mapping"], enc["input_ids"]))
            if b > a and t not in special
        ]
        known = [i for i in pos if enc["input_ids"][i] != unk]
        if not known:
            raise ConfigError(
                f"The concept {concept!r} is unknown to the tokenizer {type(tok).__name__} (it gives no known "
                "tokens); use a word the text encoder knows."
            )
        out += [seg.offset + i for i in pos]
    return out


def concept_states(pipe: Any, adapter: Any, concepts: Sequence[str]) -> torch.Tensor:
    """``[concept, channel]``: each concept's text-encoder states, averaged over its own tokens.

    Each concept is encoded alone, by the pipeline's own encoders (``latentlens.text.encode_prompts``).
    """
    from latentlens.text import encode_prompts

    positions = [concept_positions(adapter, c) for c in concepts]
    tokens = encode_prompts(pipe, list(concepts)).tokens  # [concept, token, channel]
    rows = []
    for i, pos in enumerate(positions):
        idx = torch.tensor([p for p in pos if p < tokens.shape[1]], dtype=torch.long, device=tokens.device)
        rows.append(tokens[i].index_select(0, idx).mean(dim=0))
    return torch.stack(rows)


@dataclass
class ConceptStep:
    """One block's result: the concept stream after the block (None where it ends) and the maps."""

    stream: torch.Tensor | None  # [batch, concept, channel]
    maps: dict[str, torch.Tensor]  # kind -> [batch, image_token, concept] (or [batch, head, ...])


def _heads(part: QKPart, x: torch.Tensor, heads: int, head_dim: int, apply_proj: bool) -> torch.Tensor:
    """``[batch, token, head, channel]`` of a projection (applied to ``x`` if ``apply_proj``), norm applied."""
    y = part.proj(x) if apply_proj else x
    if part.chunk is not None:
        y = y.chunk(3, dim=-1)[part.chunk]
    y = y.unflatten(-1, (heads, head_dim))
    return part.norm(y) if part.norm is not None else y


def concept_block(
    cb: ConceptBlock,
    stream: torch.Tensor,
    temb: torch.Tensor,
    img: dict[str, torch.Tensor],
    rope: Any,
    kinds: Sequence[str],
    heads: str = "mean",
) -> ConceptStep:
    """Pass the concept tokens ``stream`` ``[batch, concept, channel]`` through one joint block.

    ``img`` holds the image stream's captured projections ``"q"``/``"k"``/``"v"`` (outputs of
    ``cb.img_*.proj`` for the image tokens, before norms) and, for ``img2concept_out``, ``"out"``
    (the image tokens' attention output); ``rope`` is the block's ``image_rotary_emb`` restricted to
    ``(image rows, one text row)`` or None; ``temb`` the block's conditioning for these rows.
    """
    from diffusers.models.embeddings import apply_rotary_emb

    h, d = cb.heads, cb.head_dim
    normed, carry = cb.modulate(stream, temb)
    qc = _heads(cb.txt_q, normed, h, d, True)  # [batch, concept, head, channel]
    kc = _heads(cb.txt_k, normed, h, d, True)
    vc = _heads(cb.txt_v, normed, h, d, True)
    kx = _heads(cb.img_k, img["k"], h, d, False)  # [batch, image_token, head, channel]
    vx = _heads(cb.img_v, img["v"], h, d, False)
    qx = _heads(cb.img_q, img["q"], h, d, False) if "img2concept" in kinds else None
    if rope is not None:
        (cos_x, sin_x), (cos_t, sin_t) = rope
        n = stream.shape[1]
        rope_c = (cos_t.expand(n, -1), sin_t.expand(n, -1))
        qc, kc = apply_rotary_emb(qc, rope_c, sequence_dim=1), apply_rotary_emb(kc, rope_c, sequence_dim=1)
        kx = apply_rotary_emb(kx, (cos_x, sin_x), sequence_dim=1)
        if qx is not None:
            qx = apply_rotary_emb(qx, (cos_x, sin_x), sequence_dim=1)
    cdtype = compute_dtype(stream.dtype)
    scale = cb.scale if cb.scale is not None else d**-0.5
    keys = torch.cat([kx, kc], dim=1).to(cdtype).transpose(1, 2)  # [batch, head, image_token+concept, channel]
    values = torch.cat([vx, vc], dim=1).to(cdtype).transpose(1, 2)
    q = qc.to(cdtype).transpose(1, 2)  # [batch, head, concept, channel]
    probs = torch.softmax(torch.matmul(q * scale, keys.transpose(-1, -2)), dim=-1)  # [batch, head, concept, key]
    oc = torch.matmul(probs, values).transpose(1, 2).flatten(2)  # [batch, concept, head*channel]
    maps: dict[str, torch.Tensor] = {}
    if qx is not None:
        logits = torch.matmul(qx.to(cdtype).transpose(1, 2) * scale, kc.to(cdtype).permute(0, 2, 3, 1))
        w = torch.softmax(logits, dim=-1)  # [batch, head, image_token, concept]
        maps["img2concept"] = w.mean(dim=1) if heads == "mean" else w
    if "img2concept_out" in kinds:
        ox = img["out"].to(cdtype)  # [batch, image_token, head*channel]
        maps["img2concept_out"] = torch.matmul(ox, oc.transpose(1, 2))  # [batch, image_token, concept]
    nxt = None if cb.update is None else cb.update(stream, oc.to(stream.dtype), normed, carry)
    return ConceptStep(nxt, maps)


__all__ = ["ConceptStep", "check_concepts", "concept_block", "concept_positions", "concept_states"]
