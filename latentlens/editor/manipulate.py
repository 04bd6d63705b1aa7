"""Manipulate: move text embeddings from the source description towards the target (EMS step 2).

``E(α) = E_s + α (E_t − E_s)`` for the per-token embeddings and, identically, for the pooled ones;
``α`` (the editing degree) interpolates for 0..1 and extrapolates beyond 1. A text-space
:class:`~latentlens.Direction` ``d`` gives ``E(α) = E_s + α d`` instead (``site="text.tokens"``:
added to every token, or to ``direction.tokens`` only; ``site="text.pooled"``: added to the pooled
vector). Both prompts are encoded by the pipeline's own text encoder(s), padded to the same
length, so token ``i`` of ``E_s`` and of ``E_t`` sit at the same position; when the changed words
have the same number of tokens (all shapes-world edits), every other word stays aligned.

Example::

    model = EditModel.wrap(pipe)
    e_s, e_t = encode_pair(model, "a small red circle ...", "a small blue circle ...")
    e_half = interpolate(e_s, e_t, 0.5)
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any
from collections.abc import Sequence

import torch

from latentlens import text
from latentlens.adapters import EditModel, TextEmbeds
from latentlens.errors import ConfigError

#: |α| above this gets a warning: the embedding leaves the region the model was trained on.
SANE_DEGREE = 3.0
TEXT_SITES = ("text.tokens", "text.pooled")


def check_degree(alpha: float) -> float:
    """Return ``alpha`` as a float; warn when ``|alpha| > SANE_DEGREE`` and refuse NaN/inf."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"The editing degree must be a number, got {alpha!r}.") from None
    if alpha != alpha or alpha in (float("inf"), float("-inf")):
        raise ConfigError(f"The editing degree must be finite, got {alpha}.")
    if abs(alpha) > SANE_DEGREE:
        warnings.warn(
            f"Editing degree {alpha} is outside [-{SANE_DEGREE:g}, {SANE_DEGREE:g}]; embeddings this far from the "
            "prompts are out of distribution and the edit may break the image. Typical values are 0.5-2.",
            UserWarning,
            stacklevel=3,
        )
    return alpha


def encode_pair(
    model: EditModel, source: str | Sequence[str], target: str | Sequence[str]
) -> tuple[TextEmbeds, TextEmbeds]:
    """``(E_s, E_t)`` from one encoder pass over source and target prompts (aligned, same length)."""
    sources = [source] if isinstance(source, str) else list(source)
    targets = [target] if isinstance(target, str) else list(target)
    both = model.encode(sources + targets)
    n = len(sources)
    return both[slice(0, n)], both[slice(n, None)]


def interpolate(e_s: TextEmbeds, e_t: TextEmbeds, alpha: float | torch.Tensor) -> TextEmbeds:
    """``E_s + α (E_t − E_s)`` for tokens and pooled; ``alpha`` a float or a per-row tensor ``[batch]``.

    α = 0 returns ``E_s``'s values exactly and α = 1 returns ``E_t``'s exactly.
    """
    if e_s.tokens.shape != e_t.tokens.shape:
        raise ConfigError(
            f"Source and target embeddings are not aligned: {tuple(e_s.tokens.shape)} vs {tuple(e_t.tokens.shape)}; "
            "encode both with the same model (encode_pair) so they are padded to the same length."
        )
    a = torch.as_tensor(alpha, dtype=e_s.tokens.dtype, device=e_s.tokens.device)

    def mix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = a.view(-1, *([1] * (x.ndim - 1))) if a.ndim else a
        # exact at the end points: where w == 0 → x, where w == 1 → y
        out = x + w * (y - x)
        out = torch.where(w == 1, y, out)
        return torch.where(w == 0, x, out)

    pooled = None if e_s.pooled is None else mix(e_s.pooled, e_t.pooled)
    mask = e_s.mask
    if e_s.mask is not None and e_t.mask is not None:  # attend to every token either prompt uses
        mask = torch.maximum(e_s.mask, e_t.mask)
    return replace(e_s, tokens=mix(e_s.tokens, e_t.tokens), pooled=pooled, mask=mask)


def apply_text_direction(e_s: TextEmbeds, direction: Any, alpha: float) -> TextEmbeds:
    """``E_s + α d`` for a text-space direction (``site`` ``text.tokens`` or ``text.pooled``)."""
    site = getattr(direction, "site", None)
    if site not in TEXT_SITES:
        raise ConfigError(
            f"Direction site {site!r} is not a text-space site ({', '.join(TEXT_SITES)}); image-space directions "
            "are applied with latentlens.steer during sampling (EMSEditor does this for you)."
        )
    vector = direction.vector.to(e_s.tokens.device, e_s.tokens.dtype)  # [channel], or [token, channel] (token-wise)
    if site == "text.pooled":
        if vector.ndim != 1:
            raise ConfigError("A text.pooled direction must be one vector [D], not a token-wise [tokens, D] one.")
        if e_s.pooled is None or e_s.pooled.shape[-1] != vector.shape[0]:
            width = None if e_s.pooled is None else e_s.pooled.shape[-1]
            raise ConfigError(
                f"The direction has {vector.shape[0]} channels but this model's pooled text embedding has {width}; "
                "use a direction found on this model."
            )
        return replace(e_s, pooled=e_s.pooled + alpha * vector)
    if e_s.tokens.shape[-1] != vector.shape[-1]:
        raise ConfigError(
            f"The direction has {vector.shape[-1]} channels but this model's text tokens have {e_s.tokens.shape[-1]}; "
            "use a direction found on this model."
        )
    rows = e_s.tokens.shape[1] if direction.tokens is None else len(direction.tokens)
    if vector.ndim == 2 and vector.shape[0] != rows:
        raise ConfigError(
            f"The token-wise direction has {vector.shape[0]} rows but it applies to {rows} text tokens here; "
            "use a direction found with this model's prompt length (or give tokens=... with one index per row)."
        )
    tokens = e_s.tokens.clone()
    if direction.tokens is None:
        tokens = tokens + alpha * vector
    else:
        idx = torch.as_tensor(direction.tokens, dtype=torch.long)
        if int(idx.max()) >= tokens.shape[1]:
            raise ConfigError(
                f"Direction tokens {direction.tokens} exceed the {tokens.shape[1]} text tokens of this model."
            )
        tokens[:, idx] = tokens[:, idx] + alpha * vector
    return replace(e_s, tokens=tokens)


def changed_tokens(model: EditModel, source: str, target: str) -> tuple[list[int], list[int]]:
    """Token positions of the words that differ: ``(in the source, in the target)``.

    Same as :func:`latentlens.text.changed_tokens` with the model's text segments.
    """
    return text.changed_tokens(model, source, target)


__all__ = ["SANE_DEGREE", "apply_text_direction", "changed_tokens", "check_degree", "encode_pair", "interpolate"]
