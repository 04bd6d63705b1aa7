"""Exact, memory-bounded attention maps from captured queries and keys (docs/design.md, "Capture").

The model's own attention backend still produces its output. latentlens captures the
projections ``to_q``/``to_k`` (and ``add_q_proj``/``add_k_proj``) with forward hooks, applies
the module's own ``norm_q``/``norm_k`` (and Flux's rotary embedding), and then, in chunks of
query rows, computes the row log-sum-exp over *all* keys of the joint sequence and keeps only
the requested key columns::

    p[b, h, i, j] = exp(q_i · k_j / sqrt(d) + bias_j - lse_i),  lse_i = logsumexp_j'(q_i · k_j' / sqrt(d) + bias_j')

Each chunk holds at most :data:`CHUNK_BYTES` bytes of logits and probabilities, so the extra memory is bounded
whatever the sequence length. Maps are averaged over heads unless ``heads="all"``.

Fast path: when the module's own SDPA call ran the CPU flash kernel, the recorder keeps that
kernel's row log-sum-exp (:mod:`latentlens.attention_lse`) and :func:`columns_from_lse` multiplies
only the requested key columns, ``exp(q_i · k_j · scale - lse_i)``; every other call (masks, CUDA,
float64, several SDPA calls in one module) uses the recomputation above.
"""

from __future__ import annotations

from typing import Any

import torch

from latentlens.adapters.base import AttnSpec, CallState, QKPart
from latentlens.attention_lse import LSEResult

#: byte budget of one query chunk (logits + probabilities, [batch, head, query, key] each, compute dtype)
CHUNK_BYTES = 8 * 2**20


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs (the softmax is taken in float32), else the input dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def softmax_columns(
    q: torch.Tensor,
    k: torch.Tensor,
    columns: dict[str, slice | torch.Tensor],
    *,
    scale: float,
    bias: torch.Tensor | None = None,
    heads: str = "mean",
    chunk_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Selected columns of ``softmax(q kᵀ · scale + bias)``, rows normalised over all keys.

    ``q`` ``[batch, head, query, channel]``, ``k`` ``[batch, head, key, channel]``, ``bias`` broadcastable to
    ``[batch, head, query, key]``; ``columns`` maps an output name to a key slice, an index tensor
    ``[key]``, or per-batch-row indices ``[batch, key]``.
    Returns ``[batch, query, key]`` (head mean) or ``[batch, head, query, key]`` per name.
    """
    b, h, nq, _ = q.shape
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    nk = k.shape[2]
    cdtype = compute_dtype(q.dtype)
    elem = torch.finfo(cdtype).bits // 8
    rows = max(1, int(chunk_bytes // max(1, 2 * b * h * nk * elem)))  # logits + probabilities
    kt = k.to(cdtype).transpose(-1, -2)  # [batch, head, channel, key]
    if bias is not None:
        bias = bias.to(cdtype)
    pieces: dict[str, list[torch.Tensor]] = {name: [] for name in columns}
    for start in range(0, nq, rows):
        stop = min(nq, start + rows)
        qc = q[:, :, start:stop].to(cdtype) * scale  # [batch, head, query, channel]
        logits = torch.matmul(qc, kt)  # [batch, head, query, key]
        if bias is not None:
            logits += bias if bias.shape[-2] == 1 else bias[..., start:stop, :]
        # exp(logit - logsumexp over all keys), max-subtracted: the row normaliser covers every key
        probs = torch.softmax(logits, dim=-1)
        del logits
        for name, cols in columns.items():
            if isinstance(cols, slice):
                p = probs[..., cols]  # [batch, head, query, key]
            elif cols.ndim == 2:  # per batch row [batch, key]
                p = probs.gather(-1, cols[:, None, None, :].expand(-1, h, probs.shape[2], -1))
            else:
                p = probs.index_select(-1, cols)
            pieces[name].append(p.mean(dim=1) if heads == "mean" else p.clone())
        del probs
    return {name: torch.cat(parts, dim=-2) for name, parts in pieces.items()}


def columns_from_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    columns: dict[str, slice | torch.Tensor],
    *,
    scale: float,
    heads: str = "mean",
    chunk_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Like :func:`softmax_columns` but with the row normaliser given: ``exp(q k_selᵀ · scale - lse)``.

    ``lse`` ``[batch, head, query]`` is each query row's log-sum-exp over all keys (from the model's
    own attention kernel); only the selected key columns are multiplied, O(nq · ncols · d).
    """
    b, h, nq, _ = q.shape
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    cdtype = compute_dtype(q.dtype)
    elem = torch.finfo(cdtype).bits // 8
    lse = lse.to(cdtype)
    out: dict[str, torch.Tensor] = {}
    for name, cols in columns.items():
        if isinstance(cols, slice):
            ks = k[:, :, cols]
        elif cols.ndim == 2:  # per batch row [batch, key]
            ks = k.gather(2, cols[:, None, :, None].expand(-1, h, -1, k.shape[3]))
        else:
            ks = k.index_select(2, cols)
        kt = ks.to(cdtype).transpose(-1, -2)  # [batch, head, channel, key]
        rows = max(1, int(chunk_bytes // max(1, b * h * kt.shape[-1] * elem)))
        parts = []
        for start in range(0, nq, rows):
            stop = min(nq, start + rows)
            logits = torch.matmul(q[:, :, start:stop].to(cdtype) * scale, kt)  # [batch, head, query, key]
            p = logits.sub_(lse[:, :, start:stop, None]).exp_()
            parts.append(p.mean(dim=1) if heads == "mean" else p)
        out[name] = torch.cat(parts, dim=-2)
    return out


def _lse_fits(lse: LSEResult, k_all: torch.Tensor, bias: torch.Tensor | None, scale: float, rows: slice) -> bool:
    """Whether a captured SDPA normaliser belongs to this call: no mask, same scale, heads and joint length."""
    t = lse.lse[rows]  # [batch, head, query]
    return (
        bias is None
        and abs(lse.scale - scale) <= 1e-12 * abs(scale)
        and t.shape[0] == k_all.shape[0]
        and t.shape[1] == k_all.shape[1]
        and t.shape[2] == k_all.shape[2] == lse.nk
    )


def _project(
    state: CallState, spec_id: int, role: str, index: int, part: QKPart, heads: int, head_dim: int, rows: slice
) -> torch.Tensor:
    """A captured projection as ``[batch, token, head, channel]`` with the module's norm applied."""
    x = state.scratch[(spec_id, role, index)][rows]  # [batch, token, channel] (3 × the inner width if fused)
    if part.chunk is not None:
        x = x.chunk(3, dim=-1)[part.chunk]
    x = x.unflatten(-1, (heads, head_dim))  # [batch, token, head, channel]
    if part.norm is not None:
        x = part.norm(x)
    return x


def _streams(
    spec: AttnSpec, state: CallState, spec_id: int, role: str, parts: tuple[QKPart, ...], kwargs: dict, rows: slice
) -> list[tuple[str, torch.Tensor]]:
    """``[(stream, [batch, head, token, channel])]`` in joint-sequence order, RoPE applied, joint parts split."""
    tensors = [_project(state, spec_id, role, i, p, spec.heads, spec.head_dim, rows) for i, p in enumerate(parts)]
    names = [p.stream for p in parts]
    if spec.rope and kwargs.get("image_rotary_emb") is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        lengths = [t.shape[1] for t in tensors]
        joint = torch.cat(tensors, dim=1) if len(tensors) > 1 else tensors[0]
        joint = apply_rotary_emb(joint, kwargs["image_rotary_emb"], sequence_dim=1)
        tensors = list(joint.split(lengths, dim=1))
    out: list[tuple[str, torch.Tensor]] = []
    for name, t in zip(names, tensors):
        if name == "joint":
            out.append(("txt", t[:, : state.text_len]))
            out.append(("img", t[:, state.text_len :]))
        else:
            out.append((name, t))
    return [(n, t.transpose(1, 2)) for n, t in out]  # [batch, head, token, channel]


def _bias(mask: Any, rows: slice, dtype: torch.dtype) -> torch.Tensor | None:
    """An attention mask as an additive bias ``[batch, 1|head, 1|query, key]``."""
    if mask is None:
        return None
    m = mask[rows]
    if m.dtype == torch.bool:
        m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))
    while m.ndim < 4:
        m = m.unsqueeze(1)
    return m


def quadrant_maps(
    spec: AttnSpec,
    state: CallState,
    spec_id: int,
    kwargs: dict,
    wanted: list[str],
    rows: slice,
    heads: str = "mean",
    text_index: torch.Tensor | None = None,
    chunk_bytes: int | None = None,
    lse: LSEResult | None = None,
) -> dict[str, torch.Tensor]:
    """The requested quadrants (e.g. ``["img2txt"]``) of one attention call, exact.

    Returns ``{kind: [batch, query, key]}`` (``[batch, head, query, key]`` with ``heads="all"``). With
    ``text_index`` (token indices ``[token]``, or per batch row ``[batch, token]``), text axes keep only those
    tokens (key columns of ``*2txt``, query rows of ``txt2*``). With ``lse`` (the row log-sum-exp
    of the module's own SDPA call, see :mod:`latentlens.attention_lse`) only the requested key
    columns are multiplied; without it (or if it does not fit this call) the normaliser is recomputed.
    """
    q_needed = {spec.quadrants[w][0] for w in wanted}
    k_streams = _streams(spec, state, spec_id, "k", spec.k_parts, kwargs, rows)
    q_streams = dict(
        _streams(spec, state, spec_id, "q", spec.q_parts, kwargs, rows)
        if any(p.stream in q_needed or p.stream == "joint" for p in spec.q_parts)
        else []
    )
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    for name, t in k_streams:
        offsets[name] = (start, start + t.shape[2])
        start += t.shape[2]
    k_all = torch.cat([t for _, t in k_streams], dim=2)  # [batch, head, key, channel]
    bias = _bias(kwargs.get(spec.mask_kwarg) if spec.mask_kwarg else None, rows, compute_dtype(k_all.dtype))
    scale = spec.scale if spec.scale is not None else spec.head_dim**-0.5
    if lse is not None and not _lse_fits(lse, k_all, bias, scale, rows):
        lse = None
    result: dict[str, torch.Tensor] = {}
    for q_stream in sorted(q_needed):
        q = q_streams[q_stream]
        if q_stream == "txt" and text_index is not None:
            ti = text_index.to(q.device)
            if ti.ndim == 2:  # per batch row
                q = q.gather(2, ti[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3]))
            else:
                q = q.index_select(2, ti)
        cols: dict[str, slice | torch.Tensor] = {}
        for w in wanted:
            qs, ks = spec.quadrants[w]
            if qs != q_stream:
                continue
            a, b = offsets[ks]
            if ks == "txt" and text_index is not None:
                cols[w] = text_index.to(k_all.device) + a
            else:
                cols[w] = slice(a, b)
        qbias = bias
        if bias is not None and bias.shape[-2] > 1:
            raise NotImplementedError("per-query attention masks are not supported for maps")
        if lse is not None:
            a, b = offsets[q_stream]  # self-attention: query rows follow the key order
            q_lse = lse.lse[rows][:, :, a:b]  # [batch, head, query]
            if q_stream == "txt" and text_index is not None:
                ti = text_index.to(q_lse.device)
                q_lse = (
                    q_lse.gather(2, ti[:, None, :].expand(-1, q_lse.shape[1], -1))
                    if ti.ndim == 2
                    else q_lse.index_select(2, ti)
                )
            result.update(columns_from_lse(q, k_all, q_lse, cols, scale=scale, heads=heads, chunk_bytes=chunk_bytes))
            continue
        result.update(softmax_columns(q, k_all, cols, scale=scale, bias=qbias, heads=heads, chunk_bytes=chunk_bytes))
    return result
