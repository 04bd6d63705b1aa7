"""The shapes world's vocabulary: attributes, their values, the palette, and the 720 combinations.

This module is the single source of truth for docs/design.md ("The shapes world"). Everything else in
``latentlens.shapes`` (renderer, captions, oracle, dataset) reads its facts from here.

Example::

    from latentlens.shapes import Attributes, held_out_combinations
    a = Attributes(shape="circle", color="red", size="small", position="left", background="gray")
    a.replace(color="blue").as_dict()["color"]   # 'blue'
    len(held_out_combinations())                 # 80
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np

from latentlens.errors import ConfigError

ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "position", "background")

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
BACKGROUNDS: tuple[str, ...] = ("white", "gray", "black")

VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
}

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (50, 170, 70),
    "blue": (50, 90, 220),
    "yellow": (235, 200, 40),
    "purple": (150, 70, 190),
    "orange": (245, 140, 40),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}

# Extent of the shape (diameter / side / width) as a fraction of the canvas side.
SIZE_EXTENT: dict[str, float] = {"small": 0.24, "large": 0.44}
# Centre of the object's bounding box, (x, y) as fractions of the canvas side; y grows downwards.
POSITION_CENTER: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
# Largest displacement of the centre from POSITION_CENTER, per axis, when jitter is on.
JITTER: float = 0.03

# Number of combinations kept out of training (>= 10% of the 720).
N_HELD_OUT: int = 80
_HELD_OUT_SEED: int = 20260503


@dataclass(frozen=True)
class Attributes:
    """One point of the shapes world: every attribute of the single object and its background.

    The constructor validates every value. Example::

        Attributes("circle", "red", "small", "left", "gray")
        Attributes("dog", "red", "small", "left", "gray")  # ConfigError naming 'dog' and the valid shapes
    """

    shape: str
    color: str
    size: str
    position: str
    background: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            value = getattr(self, name)
            valid = VALUES[name]
            if value not in valid:
                raise ConfigError(f"Unknown {name} {value!r} in the shapes world; use one of: {', '.join(valid)}.")

    def replace(self, **changes: str) -> Attributes:
        """Return a copy with some attributes changed (validated), e.g. ``a.replace(color="blue")``."""
        unknown = sorted(set(changes) - set(ATTRIBUTES))
        if unknown:
            raise ConfigError(
                f"Unknown attribute name(s) {', '.join(map(repr, unknown))}; "
                f"the shapes world has: {', '.join(ATTRIBUTES)}."
            )
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, str]:
        """The attributes as ``{attribute: value}`` in ATTRIBUTES order."""
        return {name: getattr(self, name) for name in ATTRIBUTES}

    def as_tuple(self) -> tuple[str, ...]:
        """The values in ATTRIBUTES order (handy as a dict key or for sorting)."""
        return tuple(getattr(self, name) for name in ATTRIBUTES)


@functools.lru_cache(maxsize=1)
def _all() -> tuple[Attributes, ...]:
    return tuple(Attributes(*values) for values in itertools.product(*(VALUES[a] for a in ATTRIBUTES)))


def all_combinations() -> list[Attributes]:
    """The 4 x 6 x 2 x 5 x 3 = 720 combinations, in a fixed order (itertools.product over ATTRIBUTES)."""
    return list(_all())


def _pair_counts(combos: list[Attributes]) -> Counter:
    counts: Counter = Counter()
    for combo in combos:
        values = combo.as_tuple()
        for i, j in itertools.combinations(range(len(ATTRIBUTES)), 2):
            counts[(i, values[i], j, values[j])] += 1
    return counts


def _split_ok(held: list[Attributes], train: list[Attributes]) -> bool:
    """Every single value and every pair of values of two attributes still occurs in training,
    and every value occurs in the held-out set within +-30% of its fair share."""
    train_pairs = _pair_counts(train)
    all_pairs = _pair_counts(list(_all()))
    if set(train_pairs) != set(all_pairs):
        return False
    for name in ATTRIBUTES:
        counts = Counter(getattr(c, name) for c in held)
        fair = len(held) / len(VALUES[name])
        if any(abs(counts[v] - fair) > 0.3 * fair for v in VALUES[name]):
            return False
    return True


@functools.lru_cache(maxsize=1)
def _held_out_indices() -> tuple[int, ...]:
    # numpy's PCG64 stream is stable across platforms and versions, unlike Python's hash().
    combos = _all()
    for attempt in range(1000):
        rng = np.random.Generator(np.random.PCG64(_HELD_OUT_SEED + attempt))
        chosen = sorted(int(i) for i in rng.choice(len(combos), size=N_HELD_OUT, replace=False))
        chosen_set = set(chosen)
        held = [combos[i] for i in chosen]
        train = [c for i, c in enumerate(combos) if i not in chosen_set]
        if _split_ok(held, train):
            return tuple(chosen)
    raise RuntimeError("No valid held-out split found; this is a bug in latentlens.shapes.world.")


def held_out_combinations() -> list[Attributes]:
    """The 80 combinations never shown in training: fixed, seeded, identical on every machine.

    Every attribute value and every pair of values of two attributes still occurs in
    ``training_combinations()``, and each value occurs in the held-out set close to its fair share.
    """
    combos = _all()
    return [combos[i] for i in _held_out_indices()]


def training_combinations() -> list[Attributes]:
    """The 640 combinations of ``all_combinations()`` that are not held out, in the same order."""
    held = set(_held_out_indices())
    return [c for i, c in enumerate(_all()) if i not in held]


@functools.lru_cache(maxsize=1)
def _held_out_set() -> frozenset[Attributes]:
    return frozenset(held_out_combinations())


def is_held_out(attributes: Attributes) -> bool:
    """Whether ``attributes`` is one of the held-out combinations."""
    return attributes in _held_out_set()
