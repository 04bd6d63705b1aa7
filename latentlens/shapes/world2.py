"""World v2: scenes with two objects, their combinations and their held-out split.

Two objects sit left and right (``"horizontal"`` layout) or top and bottom (``"vertical"``),
each with its own shape, colour and size (values, sizes, jitter as in the one-object world);
the two colours differ and there is one background. Each object is described by an ordinary
:class:`Attributes` (its position is the slot it occupies, its background the scene's), so
everything that reads one object reads each object of a pair.

4 x 6 x 2 = 48 objects; an ordered pair with different colours: 48 x 40; x 2 layouts x 3
backgrounds = 11 520 two-object combinations.

Held-out split: a pair whose either object (with its position and the background) is a held-out
*one-object* combination is never trained on, so v1's held-out test keeps its meaning; of the
other pairs, a fixed seeded 10 % (1 152) is held out too (every object still appears in every
slot on every background in training).

Example::

    from latentlens.shapes import Attributes, TwoObjectAttributes
    pair = TwoObjectAttributes.of(
        ("circle", "red", "small"), ("square", "blue", "large"), layout="horizontal", background="gray"
    )
    pair.first.position, pair.second.position   # ('left', 'right')
    pair.replace_object(1, color="green").second.color   # 'green'
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from latentlens.errors import ConfigError
from latentlens.shapes.world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    Attributes,
    is_held_out,
)

Layout = Literal["horizontal", "vertical"]
LAYOUTS: tuple[Layout, ...] = ("horizontal", "vertical")
# The positions of the (first, second) object of each layout: first = left or top.
LAYOUT_POSITIONS: dict[str, tuple[str, str]] = {
    "horizontal": ("left", "right"),
    "vertical": ("top", "bottom"),
}
# The attributes each object of a pair has of its own (position and background follow from the scene).
OBJECT_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size")

N_TWO_OBJECT_HELD_OUT: int = 1152
_HELD_OUT_SEED_2: int = 20261201


@dataclass(frozen=True)
class TwoObjectAttributes:
    """A two-object scene: ``first`` (left or top) and ``second`` (right or bottom) object.

    Validated: the positions must be one layout's pair in order, the backgrounds equal and the
    colours different. Build one with :meth:`of`; example::

        TwoObjectAttributes(Attributes("circle", "red", "small", "top", "white"),
                            Attributes("cross", "green", "large", "bottom", "white"))
    """

    first: Attributes
    second: Attributes

    def __post_init__(self) -> None:
        for name, obj in (("first", self.first), ("second", self.second)):
            if not isinstance(obj, Attributes):
                raise ConfigError(
                    f"The {name} object of a two-object scene must be an Attributes, got {type(obj).__name__}."
                )
        pair = (self.first.position, self.second.position)
        if pair not in LAYOUT_POSITIONS.values():
            raise ConfigError(
                f"Two objects cannot be at {pair[0]!r} and {pair[1]!r}; use ('left', 'right') or "
                "('top', 'bottom'), the first object on the left or at the top."
            )
        if self.first.background != self.second.background:
            raise ConfigError(
                f"The two objects of a scene share one background, got {self.first.background!r} and "
                f"{self.second.background!r}."
            )
        if self.first.color == self.second.color:
            raise ConfigError(f"The two objects of a scene must differ in colour; both are {self.first.color!r}.")

    @classmethod
    def of(
        cls,
        first: tuple[str, str, str],
        second: tuple[str, str, str],
        layout: Layout = "horizontal",
        background: str = "gray",
    ) -> TwoObjectAttributes:
        """Build from two (shape, colour, size) triples, a layout and a background."""
        if layout not in LAYOUT_POSITIONS:
            raise ConfigError(f"Unknown layout {layout!r}; use one of: {', '.join(LAYOUTS)}.")
        p1, p2 = LAYOUT_POSITIONS[layout]
        return cls(
            Attributes(*first, position=p1, background=background),
            Attributes(*second, position=p2, background=background),
        )

    @property
    def layout(self) -> Layout:
        return "horizontal" if self.first.position == "left" else "vertical"

    @property
    def background(self) -> str:
        return self.first.background

    @property
    def objects(self) -> tuple[Attributes, Attributes]:
        return (self.first, self.second)

    def replace_object(self, index: int, **changes: str) -> TwoObjectAttributes:
        """A copy with object ``index`` (0 = first, 1 = second) changed in shape, colour or size."""
        if index not in (0, 1):
            raise ConfigError(f"Object index {index!r} does not exist; use 0 (first) or 1 (second).")
        bad = sorted(set(changes) - set(OBJECT_ATTRIBUTES))
        if bad:
            raise ConfigError(
                f"Cannot change {', '.join(map(repr, bad))} of one object; an object's own attributes are "
                f"{', '.join(OBJECT_ATTRIBUTES)} (change the layout or background with replace())."
            )
        objects = list(self.objects)
        objects[index] = objects[index].replace(**changes)
        return TwoObjectAttributes(*objects)

    def replace(self, layout: Layout | None = None, background: str | None = None) -> TwoObjectAttributes:
        """A copy with another layout and/or background (the objects keep their shape, colour, size)."""
        layout = self.layout if layout is None else layout
        background = self.background if background is None else background
        return TwoObjectAttributes.of(
            object_triple(self.first),
            object_triple(self.second),
            layout=layout,
            background=background,
        )

    def as_tuple(self) -> tuple[str, ...]:
        return self.first.as_tuple() + self.second.as_tuple()


def object_triple(obj: Attributes) -> tuple[str, str, str]:
    """(shape, colour, size) of one object."""
    return (obj.shape, obj.color, obj.size)


@functools.lru_cache(maxsize=1)
def _all2() -> tuple[TwoObjectAttributes, ...]:
    objects = list(itertools.product(SHAPES, COLORS, SIZES))
    combos = []
    for layout in LAYOUTS:
        for background in BACKGROUNDS:
            for first in objects:
                for second in objects:
                    if first[1] != second[1]:
                        combos.append(TwoObjectAttributes.of(first, second, layout=layout, background=background))
    return tuple(combos)


def all_two_object_combinations() -> list[TwoObjectAttributes]:
    """The 11 520 two-object combinations in a fixed order (layout, background, first, second)."""
    return list(_all2())


def contains_held_out_object(pair: TwoObjectAttributes) -> bool:
    """Whether either object (with its position and the background) is a held-out one-object combination."""
    return is_held_out(pair.first) or is_held_out(pair.second)


def _slots_covered(train: list[TwoObjectAttributes]) -> bool:
    """Every object occurs in every slot (left, right, top, bottom) on every background in ``train``."""
    seen = {(o.shape, o.color, o.size, o.position, o.background) for p in train for o in p.objects}
    need = {
        (s, c, z, pos, b)
        for s, c, z in itertools.product(SHAPES, COLORS, SIZES)
        for pos in ("left", "right", "top", "bottom")
        for b in BACKGROUNDS
        if not is_held_out(Attributes(s, c, z, pos, b))
    }
    return need <= seen


@functools.lru_cache(maxsize=1)
def _held_out_indices2() -> tuple[int, ...]:
    combos = _all2()
    eligible = [i for i, c in enumerate(combos) if not contains_held_out_object(c)]
    for attempt in range(100):
        rng = np.random.Generator(np.random.PCG64(_HELD_OUT_SEED_2 + attempt))
        chosen = sorted(int(eligible[i]) for i in rng.choice(len(eligible), size=N_TWO_OBJECT_HELD_OUT, replace=False))
        chosen_set = set(chosen)
        train = [combos[i] for i in eligible if i not in chosen_set]
        if _slots_covered(train):
            return tuple(chosen)
    raise RuntimeError("No valid two-object held-out split found; this is a bug in latentlens.shapes.world2.")


def two_object_held_out_combinations() -> list[TwoObjectAttributes]:
    """The 1 152 two-object combinations held out of training (fixed, seeded, same on every machine).

    None of them contains a held-out one-object combination, so they test new *pairings* of
    objects the model has seen in those places.
    """
    combos = _all2()
    return [combos[i] for i in _held_out_indices2()]


@functools.lru_cache(maxsize=1)
def _training2() -> tuple[TwoObjectAttributes, ...]:
    held = set(_held_out_indices2())
    return tuple(c for i, c in enumerate(_all2()) if i not in held and not contains_held_out_object(c))


def two_object_training_combinations() -> list[TwoObjectAttributes]:
    """The two-object combinations training uses: neither held out nor containing a held-out object."""
    return list(_training2())


@functools.lru_cache(maxsize=1)
def _held_out_set2() -> frozenset[TwoObjectAttributes]:
    return frozenset(two_object_held_out_combinations())


def is_two_object_held_out(pair: TwoObjectAttributes) -> bool:
    """Whether ``pair`` is one of the 1 152 held-out two-object combinations."""
    return pair in _held_out_set2()


def is_two_object_trained(pair: TwoObjectAttributes) -> bool:
    """Whether training ever shows ``pair``."""
    return not is_two_object_held_out(pair) and not contains_held_out_object(pair)


__all__ = [
    "LAYOUTS",
    "LAYOUT_POSITIONS",
    "OBJECT_ATTRIBUTES",
    "TwoObjectAttributes",
    "all_two_object_combinations",
    "contains_held_out_object",
    "is_two_object_held_out",
    "is_two_object_trained",
    "object_triple",
    "two_object_held_out_combinations",
    "two_object_training_combinations",
]
