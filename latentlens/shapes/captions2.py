"""Captions of two-object scenes: templates (either object first), parser, and per-object word spans.

Every template names each object as the phrase ``{size} {color} {shape}`` followed (not always
directly) by its ``{where}`` phrase, and the background once before the word "background", so
every key word has one span and :func:`parse_two_object_caption` inverts every template.

Example::

    from latentlens.shapes import TwoObjectAttributes, make_two_object_caption
    pair = TwoObjectAttributes.of(("circle", "red", "small"), ("square", "blue", "large"))
    c = make_two_object_caption(pair)
    c.text   # 'a small red circle on the left and a large blue square on the right on a gray background'
    c.word(1, "color")   # 'blue'
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentlens.errors import ConfigError
from latentlens.shapes.captions import WHERE_PHRASES, build_vocabulary, word_matches
from latentlens.shapes.world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    Attributes,
)
from latentlens.shapes.world2 import LAYOUT_POSITIONS, TwoObjectAttributes

# Per-object key words a caption spans (background is the scene's, spanned once).
OBJECT_SPAN_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "position")

# (template, layouts it reads right for). Fields: {size1} {color1} {shape1} {where1} of the first
# (left / top) object, the same with 2 for the second, and {background}.
_TEMPLATES2: tuple[tuple[str, tuple[str, ...]], ...] = (
    (  # canonical (index 0)
        "a {size1} {color1} {shape1} {where1} and a {size2} {color2} {shape2} {where2} on a {background} background",
        ("horizontal", "vertical"),
    ),
    (
        "a {size2} {color2} {shape2} {where2} and a {size1} {color1} {shape1} {where1} on a {background} background",
        ("horizontal", "vertical"),
    ),
    (
        "a {size1} {color1} {shape1} {where1} next to a {size2} {color2} {shape2} {where2}, {background} background",
        ("horizontal",),
    ),
    (
        "a {size2} {color2} {shape2} {where2} next to a {size1} {color1} {shape1} {where1}, {background} background",
        ("horizontal",),
    ),
    (
        "a {size1} {color1} {shape1} {where1} above a {size2} {color2} {shape2} {where2} on a {background} background",
        ("vertical",),
    ),
    (
        "a {size2} {color2} {shape2} {where2} below a {size1} {color1} {shape1} {where1} on a {background} background",
        ("vertical",),
    ),
    (
        "{background} background with a {size1} {color1} {shape1} {where1} and a {size2} {color2} {shape2} {where2}",
        ("horizontal", "vertical"),
    ),
    (
        "{background} background, a {size2} {color2} {shape2} {where2} and a {size1} {color1} {shape1} {where1}",
        ("horizontal", "vertical"),
    ),
)
TWO_OBJECT_TEMPLATES: tuple[str, ...] = tuple(t for t, _ in _TEMPLATES2)
# Template indices valid for each layout ("above" only describes a vertical scene, "next to" a horizontal one).
TWO_OBJECT_TEMPLATES_FOR: dict[str, tuple[int, ...]] = {
    layout: tuple(i for i, (_, layouts) in enumerate(_TEMPLATES2) if layout in layouts) for layout in LAYOUT_POSITIONS
}
CANONICAL_TWO_OBJECT_TEMPLATE: int = 0


# Every word a two-object caption can contain.
TWO_OBJECT_VOCABULARY: frozenset[str] = build_vocabulary(TWO_OBJECT_TEMPLATES)


@dataclass(frozen=True)
class TwoObjectCaption:
    """A two-object caption with the [start, end) span of every key word, per object."""

    text: str
    object_spans: tuple[Mapping[str, tuple[int, int]], Mapping[str, tuple[int, int]]]  # [object][attribute]
    background_span: tuple[int, int]

    def word(self, index: int, attribute: str) -> str:
        """Key word of ``attribute`` of object ``index`` (0 = first), e.g. ``c.word(1, "shape")``."""
        if attribute == "background":
            start, end = self.background_span
        else:
            start, end = self.object_spans[index][attribute]
        return self.text[start:end]


def _check_template2(template: Any, layout: str) -> int:
    valid = TWO_OBJECT_TEMPLATES_FOR[layout]
    if isinstance(template, bool) or not isinstance(template, (int, np.integer)) or int(template) not in valid:
        raise ConfigError(
            f"Two-object caption template {template!r} does not describe a {layout} scene; use one of "
            f"{', '.join(map(str, valid))} (0 is the canonical form) or None."
        )
    return int(template)


def make_two_object_caption(
    attributes: TwoObjectAttributes,
    template: int | None = None,
    rng: np.random.Generator | None = None,
) -> TwoObjectCaption:
    """Caption a two-object scene with template ``template`` (``None``: random with ``rng``, else canonical)."""
    if not isinstance(attributes, TwoObjectAttributes):
        raise ConfigError(f"make_two_object_caption() needs a TwoObjectAttributes, got {type(attributes).__name__}.")
    valid = TWO_OBJECT_TEMPLATES_FOR[attributes.layout]
    if template is None:
        template = valid[int(rng.integers(len(valid)))] if rng is not None else CANONICAL_TWO_OBJECT_TEMPLATE
    index = _check_template2(template, attributes.layout)
    objects = attributes.objects
    parts: list[str] = []
    spans: tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]] = ({}, {})
    background_span = (0, 0)
    length = 0
    for literal, field, _spec, _conv in string.Formatter().parse(TWO_OBJECT_TEMPLATES[index]):
        parts.append(literal)
        length += len(literal)
        if field is None:
            continue
        if field == "background":
            phrase = attributes.background
            background_span = (length, length + len(phrase))
        else:
            name, which = field[:-1], int(field[-1]) - 1
            obj = objects[which]
            if name == "where":
                phrase = WHERE_PHRASES[obj.position]
                offset = phrase.rindex(obj.position)
                spans[which]["position"] = (
                    length + offset,
                    length + offset + len(obj.position),
                )
            else:
                phrase = getattr(obj, name)
                spans[which][name] = (length, length + len(phrase))
        parts.append(phrase)
        length += len(phrase)
    ordered = tuple({a: s[a] for a in OBJECT_SPAN_ATTRIBUTES} for s in spans)
    return TwoObjectCaption(text="".join(parts), object_spans=ordered, background_span=background_span)  # type: ignore[arg-type]


def canonical_two_object_caption(attributes: TwoObjectAttributes) -> str:
    """``"a {size} {color} {shape} {where} and a {size} {color} {shape} {where} on a {background} background"``."""
    return make_two_object_caption(attributes, CANONICAL_TWO_OBJECT_TEMPLATE).text


_POSITION_WORDS = ("left", "right", "top", "bottom")


def names_second_object_first(text: str) -> bool:
    """Whether ``text`` describes two objects and names the right or bottom one first.

    The bundled toy models were trained on the left/top object named first (templates 0, 2, 4) and
    bind attributes by word order, so such prompts swap the objects' attributes.
    Example: ``names_second_object_first("a red circle on the right and a blue square on the left")`` → True.
    """
    words = [m.group() for m in word_matches(text)]
    if sum(w in SHAPES for w in words) < 2:
        return False
    places = {place for pair in LAYOUT_POSITIONS.values() for place in pair}  # left, right, top, bottom
    first_place = next((w for w in words if w in places), None)
    return first_place in {second for _, second in LAYOUT_POSITIONS.values()}


def parse_two_object_caption(text: str) -> TwoObjectAttributes:
    """Read a two-object scene back from a caption written with any two-object template.

    The caption must name two objects as ``{size} {color} {shape}``, each followed by one position
    word (left/right/top/bottom) before the next object, and the background before "background".
    """
    if not isinstance(text, str):
        raise ConfigError(f"parse_two_object_caption() needs a string, got {type(text).__name__}.")
    words = [m.group() for m in word_matches(text)]
    triples = [
        i for i in range(len(words) - 2) if words[i] in SIZES and words[i + 1] in COLORS and words[i + 2] in SHAPES
    ]
    if len(triples) != 2:
        raise ConfigError(
            f"Cannot parse {text!r} as a two-object caption: it names {len(triples)} objects as "
            "'{size} {color} {shape}' (e.g. 'small red circle'); name exactly two."
        )
    objects: list[Attributes] = []
    backgrounds = [
        words[i - 1] for i, w in enumerate(words) if w == "background" and i > 0 and words[i - 1] in BACKGROUNDS
    ]
    if len(backgrounds) != 1:
        raise ConfigError(
            f"Cannot parse {text!r}: name the background once as '{{{'/'.join(BACKGROUNDS)}}} background'."
        )
    for k, start in enumerate(triples):
        stop = triples[k + 1] if k + 1 < len(triples) else len(words)
        where = [w for w in words[start + 3 : stop] if w in _POSITION_WORDS]
        if len(where) != 1:
            raise ConfigError(
                f"Cannot parse {text!r}: the object '{' '.join(words[start : start + 3])}' needs exactly one "
                f"position word after it ({', '.join(_POSITION_WORDS)}), found {len(where)}."
            )
        size, color, shape = words[start : start + 3]
        objects.append(Attributes(shape, color, size, where[0], backgrounds[0]))
    objects.sort(key=lambda o: o.position in ("right", "bottom"))
    return TwoObjectAttributes(objects[0], objects[1])


def two_object_token_indices(
    caption: TwoObjectCaption, tokenizer: Any
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per object, per key word (shape, color, size, position, background), the token indices covering it.

    Indices count into ``tokenizer(caption.text)["input_ids"]`` ([CLS] is 0); the background's
    tokens are the same for both objects. Needs a fast tokenizer. Example::

        first, second = two_object_token_indices(make_two_object_caption(pair), tok)
        first["color"], second["color"]   # [3], [11]
    """
    try:
        encoding = tokenizer(caption.text, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise ConfigError(
            f"Tokenizer {type(tokenizer).__name__} cannot return character offsets; load a fast tokenizer."
        ) from exc
    offsets = [tuple(int(v) for v in pair) for pair in encoding["offset_mapping"]]  # [token, 2]

    def cover(span: tuple[int, int], what: str) -> list[int]:
        start, end = span
        indices = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        if not indices:
            raise ConfigError(
                f"No token of {caption.text!r} covers the {what} word {caption.text[start:end]!r}; "
                "was the caption truncated (raise max_length)?"
            )
        return indices

    background = cover(caption.background_span, "background")
    result = []
    for k, spans in enumerate(caption.object_spans):
        per = {a: cover(span, f"object {k} {a}") for a, span in spans.items()}
        per["background"] = list(background)
        result.append(per)
    return result[0], result[1]
