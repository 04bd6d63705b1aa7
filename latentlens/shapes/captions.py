"""Captions of the shapes world: templates with varied word order, their parser, and word spans.

Every template contains each attribute's key word ("small", "red", "circle", "left", "gray")
exactly once as a whole word, so each attribute has one unambiguous character span, and
``parse_caption`` inverts every template.

Example::

    from latentlens.shapes import Attributes, make_caption, parse_caption
    a = Attributes("circle", "red", "small", "left", "gray")
    c = make_caption(a)            # canonical: 'a small red circle on the left on a gray background'
    c.text[slice(*c.spans["color"])]   # 'red'
    parse_caption("gray background, large blue cross at the top").color   # 'blue'
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentlens.errors import ConfigError
from latentlens.shapes.world import ATTRIBUTES, BACKGROUNDS, VALUES, Attributes

# The phrase each position takes in a caption; its key word is the position value itself.
WHERE_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

# Template fields: one per attribute; the position attribute is written as a {where} phrase.
_FIELD_OF: dict[str, str] = {
    "size": "size",
    "color": "color",
    "shape": "shape",
    "where": "position",
    "background": "background",
}

TEMPLATES: tuple[str, ...] = (
    "a {size} {color} {shape} {where} on a {background} background",  # canonical (index 0)
    "a {size} {color} {shape} {where} over a {background} background",
    "{background} background, {size} {color} {shape} {where}",
    "{where} there is a {size} {color} {shape} on a {background} background",
    "a {color} {shape}, {size}, {where}, {background} background",
    "a {size} {color} {shape} sits {where} against a {background} background",
    "on a {background} background, a {color} {shape} of {size} size {where}",
    "{where}: a {size} {color} {shape}, {background} background",
    "a {shape} that is {size} and {color}, {where}, on a {background} background",
)
CANONICAL_TEMPLATE: int = 0

_WORD = re.compile(r"[a-z0-9]+")


def word_matches(text: str) -> list[re.Match[str]]:
    return list(_WORD.finditer(text.lower()))


def build_vocabulary(templates: Sequence[str]) -> frozenset[str]:
    """Every word captions from ``templates`` can contain: template words, position phrases, attribute values."""
    words: set[str] = set()
    for template in templates:
        for literal, _field, _spec, _conv in string.Formatter().parse(template):
            words.update(m.group() for m in word_matches(literal))
    for phrase in WHERE_PHRASES.values():
        words.update(m.group() for m in word_matches(phrase))
    for values in VALUES.values():
        words.update(values)
    return frozenset(words)


# Every word a shapes-world caption can contain (the toy model was trained on exactly these).
VOCABULARY: frozenset[str] = build_vocabulary(TEMPLATES)


@dataclass(frozen=True)
class Caption:
    """A caption and, per attribute, the [start, end) character span of its key word."""

    text: str
    spans: Mapping[str, tuple[int, int]]  # attribute -> [start, end) span of its key word

    def word(self, attribute: str) -> str:
        """The key word of ``attribute`` in the text, e.g. ``caption.word("color") == "red"``."""
        start, end = self.spans[attribute]
        return self.text[start:end]


def _check_template(template: Any) -> int:
    if (
        isinstance(template, bool)
        or not isinstance(template, (int, np.integer))
        or not (0 <= template < len(TEMPLATES))
    ):
        raise ConfigError(
            f"Caption template {template!r} does not exist; use an index from 0 to "
            f"{len(TEMPLATES) - 1} (0 is the canonical form) or None."
        )
    return int(template)


def make_caption(
    attributes: Attributes, template: int | None = None, rng: np.random.Generator | None = None
) -> Caption:
    """Caption ``attributes`` with template number ``template``.

    ``template=None`` picks a random template when ``rng`` is given, else the canonical one.
    """
    if not isinstance(attributes, Attributes):
        raise ConfigError(f"make_caption() needs an Attributes object, got {type(attributes).__name__}.")
    if template is None:
        template = int(rng.integers(len(TEMPLATES))) if rng is not None else CANONICAL_TEMPLATE
    index = _check_template(template)
    values = attributes.as_dict()
    parts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    length = 0
    for literal, field, _spec, _conv in string.Formatter().parse(TEMPLATES[index]):
        parts.append(literal)
        length += len(literal)
        if field is None:
            continue
        attribute = _FIELD_OF[field]
        value = values[attribute]
        if field == "where":
            phrase = WHERE_PHRASES[value]
            offset = phrase.rindex(value)
            spans[attribute] = (length + offset, length + offset + len(value))
        else:
            phrase = value
            spans[attribute] = (length, length + len(value))
        parts.append(phrase)
        length += len(phrase)
    return Caption(text="".join(parts), spans={a: spans[a] for a in ATTRIBUTES})


def canonical_caption(attributes: Attributes) -> str:
    """``"a {size} {color} {shape} {where} on a {background} background"``."""
    return make_caption(attributes, CANONICAL_TEMPLATE).text


def parse_caption(text: str) -> Attributes:
    """Read the attributes back from a caption written with any template (or in similar words).

    Each attribute must be named by exactly one of its values; the background is the value
    word before "background" when there is one. Raises ConfigError otherwise.
    """
    if not isinstance(text, str):
        raise ConfigError(f"parse_caption() needs a string, got {type(text).__name__}.")
    words = [m.group() for m in word_matches(text)]
    found: dict[str, str] = {}
    for attribute in ATTRIBUTES:
        hits = sorted({w for w in words if w in VALUES[attribute]}, key=words.index)
        if attribute == "background" and len(hits) > 1:
            before = [words[i - 1] for i, w in enumerate(words) if w == "background" and i > 0]
            hits = sorted({w for w in before if w in BACKGROUNDS}, key=words.index)
        if len(hits) != 1:
            problem = "names no" if not hits else f"names several ({', '.join(hits)}) for the"
            raise ConfigError(
                f"Cannot parse caption {text!r}: it {problem} {attribute}; "
                f"use exactly one of: {', '.join(VALUES[attribute])}."
            )
        found[attribute] = hits[0]
    return Attributes(**found)


def unknown_words(text: str) -> list[str]:
    """Words of ``text`` outside the shapes world's vocabulary (one- and two-object captions), lower-cased,
    in order, once each.

    Example: ``unknown_words("a red dog on the left") == ["dog"]``.
    """
    from latentlens.shapes.captions2 import TWO_OBJECT_VOCABULARY  # world v2's captions are in the world too

    seen: list[str] = []
    for match in word_matches(text):
        word = match.group()
        if word not in VOCABULARY and word not in TWO_OBJECT_VOCABULARY and word not in seen:
            seen.append(word)
    return seen


def word_token_indices(caption: Caption, tokenizer: Any) -> dict[str, list[int]]:
    """Per attribute, the indices of the tokens that cover its key word.

    Indices count into ``tokenizer(caption.text)["input_ids"]`` (so [CLS] is 0). Needs a
    Hugging Face *fast* tokenizer (``return_offsets_mapping``). Example::

        word_token_indices(make_caption(a), tok)   # {'shape': [4], 'color': [3], ...}
    """
    try:
        encoding = tokenizer(caption.text, return_offsets_mapping=True)
    except NotImplementedError as exc:  # slow (Python) tokenizers have no offsets
        raise ConfigError(
            f"Tokenizer {type(tokenizer).__name__} cannot return character offsets; "
            "load a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))."
        ) from exc
    offsets = [tuple(int(v) for v in pair) for pair in encoding["offset_mapping"]]  # [token, 2]
    result: dict[str, list[int]] = {}
    for attribute, (start, end) in caption.spans.items():
        indices = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        if not indices:
            raise ConfigError(
                f"No token of the tokenized caption {caption.text!r} covers the {attribute} word "
                f"{caption.text[start:end]!r}; was the caption truncated (raise max_length)?"
            )
        result[attribute] = indices
    return result
