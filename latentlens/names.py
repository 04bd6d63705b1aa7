"""Site names: the grammar, selection by glob / list / callable, aliases and step selection.

The grammar (``docs/design.md``, "Names") is the public contract::

    blocks.{i}.resid_in.{img|txt}     blocks.{i}.resid_out.{img|txt}
    blocks.{i}.attn_out.{img|txt}     blocks.{i}.ff_out.{img|txt}
    blocks.{i}.attn.{img2txt|txt2img|img2img|txt2txt}
    blocks.{i}.mod  (+ blocks.{i}.mod.txt)
    text.tokens   text.pooled   latents   pred

plus per-architecture additions documented in each adapter (``attn2_out.img`` and
``attn2.img2img`` for SD3.5 dual-attention blocks, ``xattn_out.img`` for PixArt).

Example::

    select_names(["blocks.0.resid_out.img", "pred"], "blocks.*.resid_out.*")
    # ['blocks.0.resid_out.img']
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Any, Protocol, TypeAlias
from collections.abc import Callable, Iterable, Sequence

from latentlens.errors import ConfigError, UnknownNameError

Sites: TypeAlias = str | Sequence[str] | Callable[[str], bool] | None
Steps: TypeAlias = int | Sequence[int] | range | slice | None

MAP_KINDS = ("img2txt", "txt2img", "img2img", "txt2txt")
#: concept maps (``record(..., concepts=[...])``): attention weights and attention-output similarity
CONCEPT_KINDS = ("img2concept", "img2concept_out")


def is_map(name: str) -> bool:
    """True for attention-map names (``blocks.{i}.attn.img2txt``, ``blocks.{i}.attn2.img2img``, concept maps)."""
    kind = name.rsplit(".", 1)[-1]
    return kind in MAP_KINDS or kind in CONCEPT_KINDS


def is_concept_map(name: str) -> bool:
    """True for concept-map names (``blocks.{i}.attn.img2concept``, ``blocks.{i}.attn.img2concept_out``)."""
    return name.rsplit(".", 1)[-1] in CONCEPT_KINDS


def concept_names(adapter: Any) -> list[str]:
    """The concept-map names of an adapter's joint blocks, in block order (empty: no joint text blocks)."""
    return [f"{cb.prefix}.{kind}" for cb in adapter.concept_blocks() for kind in CONCEPT_KINDS]


class NamedLayout(Protocol):
    """What :func:`recordable_names` reads of an adapter."""

    def sites(self) -> Sequence[Any]: ...

    def attention(self) -> Sequence[Any]: ...


def recordable_names(adapter: NamedLayout) -> list[str]:
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


def block_of(name: str) -> int | None:
    """The block number of a ``blocks.{i}.…`` name, else None."""
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def unknown_name_error(bad: str, valid: Iterable[str], what: str = "site") -> UnknownNameError:
    """An error naming ``bad`` and the closest valid names."""
    valid = list(valid)
    close = difflib.get_close_matches(bad, valid, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(
        f"Unknown {what} name {bad!r}.{hint} Call latentlens.site_names(target) to list all "
        f"{len(valid)} valid names for this model."
    )


def select_names(
    valid: Sequence[str],
    sites: Sites,
    aliases: Callable[[str], str] | None = None,
    *,
    default: Sites = None,
) -> list[str]:
    """The names of ``valid`` chosen by ``sites`` (glob string, list of names/globs, or callable), in ``valid``'s order.

    A pattern without wildcards must name a site exactly (after alias resolution); a glob must
    match at least one name; otherwise :class:`UnknownNameError` suggests the closest names.
    """
    if sites is None:
        sites = default
    if sites is None:
        return []
    if callable(sites) and not isinstance(sites, str):
        return [n for n in valid if sites(n)]
    patterns = [sites] if isinstance(sites, str) else list(sites)
    chosen: set[str] = set()
    valid_set = set(valid)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"Site patterns must be strings; got {pattern!r} of type {type(pattern).__name__}.")
        if aliases is not None:
            pattern = aliases(pattern)
        if any(ch in pattern for ch in "*?["):
            hits = fnmatch.filter(valid, pattern)
            if not hits:
                raise unknown_name_error(pattern, valid, what="site pattern")
            chosen.update(hits)
        elif pattern in valid_set:
            chosen.add(pattern)
        else:
            raise unknown_name_error(pattern, valid)
    return [n for n in valid if n in chosen]


class StepSelection:
    """Which transformer calls (steps) to keep: None = all, an int, a list, a range or a slice.

    Negative indices are refused because the number of steps is unknown until the run ends.
    """

    def __init__(self, steps: Steps) -> None:
        self.raw = steps
        self.explicit: list[int] | None = None
        self.slice: slice | None = None
        if steps is None:
            return
        if isinstance(steps, slice):
            for part in (steps.start, steps.stop, steps.step):
                if part is not None and (not isinstance(part, int) or part < 0):
                    raise ConfigError(
                        f"steps={steps!r} must use non-negative integers (the number of steps is unknown "
                        "before the run); use e.g. slice(10, None)."
                    )
            if steps.step == 0:
                raise ConfigError("steps slice step must not be zero.")
            self.slice = steps
            return
        if isinstance(steps, bool):
            raise ConfigError(f"steps={steps!r} is not a step index; pass an int, list, range or slice.")
        if isinstance(steps, int):
            steps = [steps]
        try:
            values = [int(s) for s in steps]  # type: ignore[union-attr]
        except TypeError as error:
            raise ConfigError(
                f"steps={steps!r} is not understood; pass None, an int, a list of ints, a range or a slice."
            ) from error
        bad = [s for s in values if s < 0]
        if bad:
            raise ConfigError(
                f"steps={steps!r} holds negative indices {bad}; the number of steps is unknown before the "
                "run, so pass non-negative indices (0 is the first transformer call)."
            )
        self.explicit = sorted(set(values))

    def __contains__(self, step: int) -> bool:
        if self.explicit is not None:
            return step in self.explicit
        if self.slice is not None:
            start = self.slice.start or 0
            stride = self.slice.step or 1
            if step < start or (self.slice.stop is not None and step >= self.slice.stop):
                return False
            return (step - start) % stride == 0
        return True

    def check(self, n_steps: int) -> None:
        """Raise :class:`ConfigError` if explicitly requested steps were never reached."""
        if self.explicit is None:
            return
        missing = [s for s in self.explicit if s >= n_steps]
        if missing:
            raise ConfigError(
                f"steps {missing} were requested, but the transformer was called only {n_steps} time(s) "
                f"(valid steps 0..{n_steps - 1}); pass steps within that range or run more inference steps."
            )
