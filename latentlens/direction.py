"""A direction in a DiT's activation space, with where it lives and where it came from.

A :class:`Direction` is what the analysis layer hands to ``steer`` and to the EMS
editor: one vector (or one vector per token position, ``[token, channel]``) plus the site it belongs to
(``blocks.3.resid_out.img``; a text-space direction uses ``text.tokens``), the denoising steps and token
positions it should be applied at (``None`` = all), and a provenance record
(method, attribute, from/to values, run, accuracy, ...).

It is saved as two files side by side: ``NAME.safetensors`` (the vector) and
``NAME.json`` (everything else).

Example::

    import torch
    from latentlens import Direction
    d = Direction(torch.randn(64), site="blocks.3.resid_out.img", steps=[2, 3],
                  provenance={"method": "class_mean", "attribute": "color", "from": "red", "to": "blue"})
    d.save("red_to_blue")              # red_to_blue.safetensors + red_to_blue.json
    d2 = Direction.load("red_to_blue")
    d2.check_fits(64)                  # raises ConfigError if the model's width differs
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch

from latentlens.errors import ConfigError, StoreError

FORMAT_VERSION = 1
_SITE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_BLOCK_RE = re.compile(r"^(?:single_)?blocks\.(\d+)\.")


def _int_list(value: Any, what: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = [value]
    try:
        items = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"Direction {what} must be a list of integers or None, got {value!r}.") from None
    if any(isinstance(v, bool) for v in value) or any(v < 0 for v in items):
        raise ConfigError(f"Direction {what} must be non-negative integers, got {value!r}.")
    return items


@dataclass
class Direction:
    """A vector in one site's space, plus where to apply it and how it was found.

    Attributes:
        vector: ``torch.Tensor`` of shape ``[channel]`` (stored as float32), or ``[token, channel]`` for a
            token-wise direction: row ``j`` is added at token ``j`` of the site (or at ``tokens[j]``).
        site: the recorder site name it lives in, e.g. ``"blocks.3.resid_out.img"``;
            text-space directions use ``"text.tokens"``.
        steps: denoising step indices it applies to, or ``None`` for every step.
        tokens: token indices (within the site's stream) it applies to, or ``None`` for all.
        provenance: free-form JSON-serialisable record, e.g. ``{"method": "probe",
            "attribute": "color", "from": "red", "to": "blue", "run": "...", "accuracy": 0.98}``.
    """

    vector: torch.Tensor  # [channel] or [token, channel]
    site: str
    steps: Sequence[int] | None = None  # stored as a list of ints
    tokens: Sequence[int] | None = None  # stored as a list of ints
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        vector = self.vector
        if not isinstance(vector, torch.Tensor):
            try:
                vector = torch.as_tensor(vector)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(
                    f"Direction vector must be a tensor or array, got {type(self.vector).__name__}."
                ) from None
        if vector.ndim not in (1, 2) or vector.numel() == 0:
            raise ConfigError(
                f"Direction vector must be [dim] or [tokens, dim] with at least one entry, got shape "
                f"{tuple(vector.shape)}; pass one vector of the site's width (e.g. probe.coef_[k])."
            )
        vector = vector.detach().to("cpu", torch.float32).contiguous()
        if not torch.isfinite(vector).all():
            raise ConfigError(f"Direction vector for site {self.site!r} contains NaN or infinite values.")
        self.vector = vector
        if not isinstance(self.site, str) or not _SITE_RE.match(self.site):
            raise ConfigError(
                f"Direction site must be a site name such as 'blocks.3.resid_out.img' or 'text.tokens', "
                f"got {self.site!r}."
            )
        self.steps = _int_list(self.steps, "steps")
        self.tokens = _int_list(self.tokens, "tokens")
        if self.token_rows is not None and self.tokens is not None and len(self.tokens) != self.token_rows:
            raise ConfigError(
                f"This token-wise direction has {self.token_rows} rows but tokens={self.tokens} names "
                f"{len(self.tokens)} positions; give one token index per row (or tokens=None for positions 0..n-1)."
            )
        if not isinstance(self.provenance, dict):
            raise ConfigError(f"Direction provenance must be a dict, got {type(self.provenance).__name__}.")
        self.provenance = dict(self.provenance)

    # ------------------------------------------------------------------ views
    @property
    def dim(self) -> int:
        """Width of the space the vector lives in."""
        return int(self.vector.shape[-1])

    @property
    def token_rows(self) -> int | None:
        """Number of token positions of a token-wise ``[token, channel]`` direction, else ``None``."""
        return int(self.vector.shape[0]) if self.vector.ndim == 2 else None

    @property
    def stream(self) -> str:
        """``"img"`` or ``"txt"`` (text-space sites count as ``"txt"``), or ``""`` when the site has no stream."""
        if self.site.startswith("text."):
            return "txt"
        last = self.site.rsplit(".", 1)[-1]
        return last if last in ("img", "txt") else ""

    @property
    def block(self) -> int | None:
        """Block index parsed from the site name (``blocks.3.…`` → 3), or ``None``."""
        match = _BLOCK_RE.match(self.site)
        return int(match.group(1)) if match else None

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def normalized(self) -> Direction:
        """A copy with a unit-norm vector (provenance keeps the original norm)."""
        norm = self.norm
        if norm == 0.0:
            raise ConfigError(f"Cannot normalise the zero direction at site {self.site!r}.")
        provenance = dict(self.provenance)
        provenance.setdefault("original_norm", norm)
        return Direction(self.vector / norm, self.site, self.steps, self.tokens, provenance)

    def scaled(self, factor: float) -> Direction:
        """A copy whose vector is multiplied by ``factor``."""
        return Direction(self.vector * float(factor), self.site, self.steps, self.tokens, dict(self.provenance))

    def __mul__(self, factor: float) -> Direction:
        return self.scaled(factor)

    __rmul__ = __mul__

    def cosine(self, other: Direction) -> float:
        """Cosine similarity with another direction of the same shape (token-wise ones are flattened)."""
        other.check_fits(self.dim, what=f"direction at {self.site!r}")
        if other.vector.shape != self.vector.shape:
            raise ConfigError(
                f"Cannot compare directions of shapes {tuple(self.vector.shape)} and {tuple(other.vector.shape)}; "
                "compare two vectors, or two token-wise directions with the same number of tokens."
            )
        denom = self.norm * other.norm
        return float(self.vector.reshape(-1) @ other.vector.reshape(-1) / denom) if denom > 0 else math.nan

    # ------------------------------------------------------------ validation
    def fits(self, dim: int) -> bool:
        """Whether the vector has width ``dim``."""
        return self.dim == int(dim)

    def check_fits(self, dim: int, what: str = "the model") -> None:
        """Raise :class:`ConfigError` if the vector's width is not ``dim``.

        Example: ``d.check_fits(pipe.transformer.inner_dim, what="pipeline 'toy'")``.
        """
        if not self.fits(dim):
            raise ConfigError(
                f"Direction for site {self.site!r} has width {self.dim}, but {what} has width {int(dim)} at that "
                "site; use a direction found on the same model (check its provenance['run'])."
            )

    # ------------------------------------------------------------------- I/O
    @staticmethod
    def _paths(path: str | Path) -> tuple[Path, Path]:
        path = Path(path)
        if path.suffix in (".safetensors", ".json"):
            path = path.with_suffix("")
        return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")

    def metadata(self) -> dict[str, Any]:
        """The JSON side of the saved direction."""
        return {
            "format": "latentlens.direction",
            "version": FORMAT_VERSION,
            "site": self.site,
            "stream": self.stream,
            "dim": self.dim,
            "token_rows": self.token_rows,
            "steps": self.steps,
            "tokens": self.tokens,
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path.safetensors`` and ``path.json``; returns both paths."""
        from safetensors.torch import save_file

        tensor_path, json_path = self._paths(path)
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            text = json.dumps(self.metadata(), indent=2, allow_nan=True)
        except TypeError as error:
            raise ConfigError(f"Direction provenance must be JSON-serialisable: {error}.") from None
        save_file({"vector": self.vector}, str(tensor_path), metadata={"site": self.site})
        json_path.write_text(text + "\n")
        return tensor_path, json_path

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """Read a direction written by :meth:`save` (``path`` with or without suffix)."""
        from safetensors.torch import load_file

        tensor_path, json_path = cls._paths(path)
        for p in (tensor_path, json_path):
            if not p.is_file():
                raise StoreError(
                    f"Cannot load direction {str(path)!r}: {p} does not exist; a saved direction is a pair "
                    "NAME.safetensors + NAME.json written by Direction.save(NAME)."
                )
        try:
            meta = json.loads(json_path.read_text())
            tensors = load_file(str(tensor_path))
        except Exception as error:  # json, OS and safetensors' own error types
            raise StoreError(f"Cannot read direction {str(path)!r}: {error}.") from None
        if meta.get("format") != "latentlens.direction" or "vector" not in tensors:
            raise StoreError(f"{json_path} is not a latentlens direction (missing format tag or 'vector' tensor).")
        return cls(
            vector=tensors["vector"],
            site=meta["site"],
            steps=meta.get("steps"),
            tokens=meta.get("tokens"),
            provenance=meta.get("provenance") or {},
        )

    def __repr__(self) -> str:
        what = self.provenance.get("method", "?")
        attr = self.provenance.get("attribute")
        label = f"{what}:{attr}" if attr else what
        return (
            f"Direction(site={self.site!r}, dim={self.dim}, steps={self.steps}, tokens={self.tokens}, "
            f"norm={self.norm:.4g}, provenance={label})"
        )
