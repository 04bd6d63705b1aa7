"""Random (scene, caption) pairs for training and evaluation.

Example::

    import numpy as np
    from latentlens.shapes import sample_scenes
    pairs = sample_scenes(16, np.random.default_rng(0), canvas=32)
    images = np.stack([scene.image for scene, _ in pairs])   # uint8 [16, 32, 32, 3]
    texts = [caption.text for _, caption in pairs]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latentlens.errors import ConfigError
from latentlens.shapes.captions import Caption, make_caption
from latentlens.shapes.captions2 import TwoObjectCaption, make_two_object_caption
from latentlens.shapes.render import Scene, render
from latentlens.shapes.render2 import TwoObjectScene, render_two
from latentlens.shapes.world import Attributes, training_combinations
from latentlens.shapes.world2 import (
    TwoObjectAttributes,
    two_object_training_combinations,
)


def sample_scenes(
    n: int,
    rng: np.random.Generator,
    canvas: int = 32,
    combinations: Sequence[Attributes] | None = None,
    template: int | None = None,
) -> list[tuple[Scene, Caption]]:
    """Draw ``n`` scenes: a uniformly random combination (default: the training combinations),
    a jittered position, and a caption (random template unless ``template`` is given).

    The result depends only on ``rng``'s state, so a seeded generator reproduces it exactly.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"Number of scenes {n!r} must be a non-negative integer.")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"sample_scenes() needs a numpy Generator, got {type(rng).__name__}; pass np.random.default_rng(seed)."
        )
    pool = list(training_combinations() if combinations is None else combinations)
    if not pool:
        raise ConfigError("sample_scenes() got an empty list of combinations; pass at least one.")
    pairs: list[tuple[Scene, Caption]] = []
    for _ in range(int(n)):
        attributes = pool[int(rng.integers(len(pool)))]
        scene = render(attributes, canvas=canvas, rng=rng)
        caption = make_caption(attributes, template=template, rng=rng)
        pairs.append((scene, caption))
    return pairs


def sample_two_object_scenes(
    n: int,
    rng: np.random.Generator,
    canvas: int = 32,
    combinations: Sequence[TwoObjectAttributes] | None = None,
    template: int | None = None,
) -> list[tuple[TwoObjectScene, TwoObjectCaption]]:
    """Like :func:`sample_scenes` for two-object scenes (default: the two-object training combinations).

    Example: ``sample_two_object_scenes(8, np.random.default_rng(0))[0][1].text``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"Number of scenes {n!r} must be a non-negative integer.")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"sample_two_object_scenes() needs a numpy Generator, got {type(rng).__name__}; "
            "pass np.random.default_rng(seed)."
        )
    pool = list(two_object_training_combinations() if combinations is None else combinations)
    if not pool:
        raise ConfigError("sample_two_object_scenes() got an empty list of combinations; pass at least one.")
    pairs: list[tuple[TwoObjectScene, TwoObjectCaption]] = []
    for _ in range(int(n)):
        attributes = pool[int(rng.integers(len(pool)))]
        scene = render_two(attributes, canvas=canvas, rng=rng)
        pairs.append((scene, make_two_object_caption(attributes, template=template, rng=rng)))
    return pairs
