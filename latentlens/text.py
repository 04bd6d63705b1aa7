"""Text facts shared by the recorder, the interventions, the editor and the analysis: where a
word's tokens sit in ``encoder_hidden_states``, which tokens differ between two prompts, and the
pipeline's own prompt encoding.

Every function reads the architecture's text segments (tokenizer, offset, length) from its adapter,
so recording and editing locate and truncate tokens the same way.

Example::

    from latentlens.text import word_token_indices, changed_tokens
    word_token_indices(pipe, "red", "a small red circle")                       # [3]
    changed_tokens(pipe, "a small red circle", "a small blue circle")           # ([3], [3])
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any, TypeAlias

import torch

from latentlens.adapters import Adapter, TextEmbeds, TextSegment, adapter_for, edit_model_for
from latentlens.errors import ConfigError

#: what ``tokens=`` accepts: token indices into ``encoder_hidden_states`` and/or words of the prompt
TokenSpec: TypeAlias = int | str | Sequence[int | str] | torch.Tensor | None


def _segments(target: Any, max_sequence_length: int | None = None) -> list[TextSegment]:
    adapter = target if isinstance(target, Adapter) else adapter_for(target)
    return adapter.text_segments(max_sequence_length)


def word_token_indices(target: Any, word: str, prompt: str) -> list[int]:
    """Positions in ``encoder_hidden_states`` of the tokens of ``word`` (its first whole-word occurrence).

    ``target`` is a pipeline or its adapter. Uses the pipeline's own tokenizers and their offsets
    mapping, one segment per text encoder (SD3: CLIP tokens then T5 tokens; Flux: T5; PixArt and
    the toy model: one tokenizer), each truncated to its segment length.
    Example: ``word_token_indices(pipe, "red", "a small red circle")``.
    """
    target_word = word.strip()
    found = (
        re.search(r"(?<!\w)" + re.escape(target_word) + r"(?!\w)", prompt, flags=re.IGNORECASE) if target_word else None
    )
    if found is None:
        raise ConfigError(f"tokens: the word {target_word!r} does not occur in the prompt {prompt!r}.")
    start, stop = found.span()
    segments = _segments(target)
    if not segments:
        raise ConfigError(
            f"tokens: {word!r} is a word, but the target has no tokenizer (a bare transformer?); "
            "pass token indices instead."
        )
    out: list[int] = []
    for segment in segments:
        enc = segment.tokenizer(prompt, return_offsets_mapping=True, truncation=True, max_length=segment.length)
        for i, (a, b) in enumerate(enc["offset_mapping"]):
            if b > a and a < stop and b > start:
                out.append(segment.offset + i)
    if not out:
        raise ConfigError(f"tokens: the word {word!r} was truncated away by the tokenizer; pass token indices.")
    return out


def resolve_tokens(tokens: TokenSpec, target: Any, prompt: str | Sequence[str] | None = None) -> torch.Tensor | None:
    """Token indices from ints or words: ``[token]`` shared by all rows, or ``[prompt, token]`` for a prompt list.

    Example: ``resolve_tokens(["red", 0], pipe, "a small red circle")`` → ``tensor([0, 3])``.
    """
    if tokens is None:
        return None
    items: list[int | str]
    if isinstance(tokens, (str, int)):
        items = [tokens]
    elif isinstance(tokens, torch.Tensor):
        items = tokens.tolist()
    else:
        items = list(tokens)
    prompts = [prompt] if isinstance(prompt, str) or prompt is None else list(prompt)
    rows: list[list[int]] = []
    for p in prompts:
        idx: list[int] = []
        for t in items:
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
                idx.extend(word_token_indices(target, t, p))
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
    return torch.tensor(rows, dtype=torch.long)  # [prompt, token]


def changed_tokens(
    target: Any, source: str, target_prompt: str, max_sequence_length: int | None = None
) -> tuple[list[int], list[int]]:
    """Token positions of the words that differ: ``(in the source, in the target)``.

    ``target`` is a pipeline, its adapter, or an :class:`~latentlens.adapters.EditModel` (whose
    ``max_sequence_length`` then applies). Each text encoder's token ids are compared with a
    longest-matching-blocks diff, so a word that changes into a word with a different number of
    tokens still marks only itself; positions are offsets into ``encoder_hidden_states`` (segment
    offsets included). Special tokens never count.
    """
    adapter = getattr(target, "adapter", None)
    if adapter is not None and max_sequence_length is None:
        max_sequence_length = getattr(target, "max_sequence_length", None)
    src_pos: list[int] = []
    tgt_pos: list[int] = []
    for segment in _segments(adapter if adapter is not None else target, max_sequence_length):
        tokenizer = segment.tokenizer
        ids_s = tokenizer(source, truncation=True, max_length=segment.length)["input_ids"]
        ids_t = tokenizer(target_prompt, truncation=True, max_length=segment.length)["input_ids"]
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        matcher = difflib.SequenceMatcher(a=ids_s, b=ids_t, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            src_pos += [segment.offset + i for i in range(i1, i2) if ids_s[i] not in special]
            tgt_pos += [segment.offset + j for j in range(j1, j2) if ids_t[j] not in special]
    return sorted(set(src_pos)), sorted(set(tgt_pos))


def encode_prompts(pipe: Any, prompts: Sequence[str], **model_kwargs: Any) -> TextEmbeds:
    """The pipeline's own text embeddings of ``prompts`` (tokens ``[prompt, token, channel]`` and pooled).

    Example: ``encode_prompts(pipe, ["a red circle", "a blue circle"]).tokens.shape``.
    """
    return edit_model_for(pipe, **model_kwargs).encode(list(prompts))


__all__ = ["TokenSpec", "changed_tokens", "encode_prompts", "resolve_tokens", "word_token_indices"]
