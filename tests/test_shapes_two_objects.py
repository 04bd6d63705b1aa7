"""World v2: two-object combinations, held-out split, renderer, captions and token indices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from latentlens.errors import ConfigError
from latentlens.shapes import (
    BACKGROUND_RGB,
    COLOR_RGB,
    LAYOUT_POSITIONS,
    TWO_OBJECT_TEMPLATES,
    TWO_OBJECT_TEMPLATES_FOR,
    TWO_OBJECT_VOCABULARY,
    Attributes,
    TwoObjectAttributes,
    all_two_object_combinations,
    canonical_two_object_caption,
    contains_held_out_object,
    held_out_combinations,
    is_two_object_held_out,
    is_two_object_trained,
    make_two_object_caption,
    parse_two_object_caption,
    render,
    render_two,
    sample_two_object_scenes,
    two_object_held_out_combinations,
    two_object_token_indices,
    two_object_training_combinations,
    unknown_words,
)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from tiny_pipes import minilm

    return minilm()[0]


PAIR = TwoObjectAttributes.of(
    ("circle", "red", "small"), ("square", "blue", "large"), "horizontal", "gray"
)


def test_all_two_object_combinations_are_the_11520_valid_pairs():
    combos = all_two_object_combinations()
    assert len(combos) == 48 * 40 * 2 * 3 == len(set(combos))
    assert all(p.first.color != p.second.color for p in combos)
    assert {(p.first.position, p.second.position) for p in combos} == set(
        LAYOUT_POSITIONS.values()
    )
    assert all_two_object_combinations() == combos  # fixed order


def test_invalid_pairs_are_config_errors_naming_the_problem():
    gray = {"background": "gray"}
    with pytest.raises(ConfigError, match="differ in colour"):
        TwoObjectAttributes.of(("circle", "red", "small"), ("square", "red", "large"))
    with pytest.raises(ConfigError, match="'left' and 'bottom'"):
        TwoObjectAttributes(
            Attributes("circle", "red", "small", "left", **gray),
            Attributes("cross", "blue", "small", "bottom", **gray),
        )
    with pytest.raises(ConfigError, match="one background"):
        TwoObjectAttributes(
            Attributes("circle", "red", "small", "left", "gray"),
            Attributes("cross", "blue", "small", "right", "white"),
        )
    with pytest.raises(ConfigError, match="diagonal"):
        TwoObjectAttributes.of(
            ("circle", "red", "small"), ("square", "blue", "large"), layout="diagonal"
        )
    with pytest.raises(ConfigError, match="position"):
        PAIR.replace_object(0, position="top")
    assert PAIR.replace_object(1, color="green").second.color == "green"
    assert PAIR.replace(layout="vertical").first.position == "top"


def test_held_out_split_is_fixed_disjoint_and_keeps_v1_held_out_objects_out_of_training():
    held, train = two_object_held_out_combinations(), two_object_training_combinations()
    assert len(held) == 1152 and len(set(held)) == 1152
    assert not set(held) & set(train)
    assert all(
        is_two_object_held_out(p) and not is_two_object_trained(p) for p in held[:50]
    )
    # No trained pair contains a one-object held-out combination (v1's held-out test keeps its meaning) ...
    v1_held = set(held_out_combinations())
    assert not any(o in v1_held for p in train for o in p.objects)
    assert not any(contains_held_out_object(p) for p in held)
    # ... and every (object, slot, background) not held out in v1 still occurs in training.
    seen = {o for p in train for o in p.objects}
    for obj in itertools.product(
        ("circle", "square", "triangle", "cross"), COLOR_RGB, ("small", "large")
    ):
        for position in ("left", "right", "top", "bottom"):
            for background in BACKGROUND_RGB:
                a = Attributes(*obj, position, background)
                assert (a in seen) != (a in v1_held), a
    assert (
        len(train)
        + len(held)
        + sum(contains_held_out_object(p) for p in all_two_object_combinations())
        == 11520
    )


def test_render_two_draws_each_object_exactly_as_the_one_object_renderer():
    scene = render_two(PAIR, canvas=32)  # no jitter
    assert (
        scene.image.shape == (32, 32, 3)
        and scene.image.dtype == np.uint8
        and scene.masks.shape == (2, 32, 32)
    )
    for k, obj in enumerate(PAIR.objects):
        alone = render(obj, canvas=32)
        np.testing.assert_array_equal(scene.masks[k], alone.mask)
        half = slice(0, 16) if k == 0 else slice(16, 32)
        np.testing.assert_array_equal(scene.image[:, half], alone.image[:, half])
    assert not (scene.masks[0] & scene.masks[1]).any()
    a = render_two(PAIR, 32, np.random.default_rng(5))
    b = render_two(PAIR, 32, np.random.default_rng(5))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.centers != scene.centers and all(
        abs(a.centers[0][i] - (0.25, 0.5)[i]) <= 0.03 for i in (0, 1)
    )
    with pytest.raises(ConfigError, match="TwoObjectAttributes"):
        render_two(PAIR.first)


def test_canonical_caption_and_word_spans():
    c = make_two_object_caption(PAIR)
    assert (
        c.text
        == "a small red circle on the left and a large blue square on the right on a gray background"
    )
    assert c.text == canonical_two_object_caption(PAIR)
    assert [c.word(0, a) for a in ("size", "color", "shape", "position")] == [
        "small",
        "red",
        "circle",
        "left",
    ]
    assert [c.word(1, a) for a in ("size", "color", "shape", "position")] == [
        "large",
        "blue",
        "square",
        "right",
    ]
    assert c.word(0, "background") == "gray"
    vertical = make_two_object_caption(PAIR.replace(layout="vertical"))
    assert (
        vertical.text
        == "a small red circle at the top and a large blue square at the bottom on a gray background"
    )


@pytest.mark.parametrize("layout", ["horizontal", "vertical"])
def test_every_template_parses_back_and_spans_name_the_right_words(layout):
    pair = PAIR.replace(layout=layout, background="white")
    texts = set()
    for template in TWO_OBJECT_TEMPLATES_FOR[layout]:
        c = make_two_object_caption(pair, template)
        texts.add(c.text)
        assert parse_two_object_caption(c.text) == pair, c.text
        for k, obj in enumerate(pair.objects):
            for attribute in ("shape", "color", "size", "position"):
                assert c.word(k, attribute) == getattr(obj, attribute)
        assert set(w for w in c.text.replace(",", " ").split()) <= TWO_OBJECT_VOCABULARY
        assert (
            unknown_words(c.text) == []
        )  # `latentlens generate` does not warn about two-object prompts
    assert len(texts) == len(TWO_OBJECT_TEMPLATES_FOR[layout]) >= 6
    with pytest.raises(ConfigError, match="does not describe"):
        make_two_object_caption(
            pair,
            [
                t
                for t in range(len(TWO_OBJECT_TEMPLATES))
                if t not in TWO_OBJECT_TEMPLATES_FOR[layout]
            ][0],
        )


def test_either_object_comes_first_in_some_template():
    firsts = {
        make_two_object_caption(PAIR, t).text.split(" circle")[0].endswith("red")
        for t in TWO_OBJECT_TEMPLATES_FOR["horizontal"]
    }
    orders = {
        make_two_object_caption(PAIR, t).text.index("circle")
        < make_two_object_caption(PAIR, t).text.index("square")
        for t in TWO_OBJECT_TEMPLATES_FOR["horizontal"]
    }
    assert firsts == {True} and orders == {True, False}


def test_parse_errors_are_clear():
    with pytest.raises(ConfigError, match="names 1 objects"):
        parse_two_object_caption("a small red circle on the left on a gray background")
    with pytest.raises(ConfigError, match="position word"):
        parse_two_object_caption(
            "a small red circle and a large blue square on the right on a gray background"
        )
    with pytest.raises(ConfigError, match="differ in colour"):
        parse_two_object_caption(
            "a small red circle on the left and a large red square on the right on a gray background"
        )


def test_token_indices_of_both_objects_point_at_their_words(minilm_tokenizer):
    for layout in ("horizontal", "vertical"):
        pair = PAIR.replace(layout=layout)
        for template in TWO_OBJECT_TEMPLATES_FOR[layout]:
            c = make_two_object_caption(pair, template)
            ids = minilm_tokenizer(c.text)["input_ids"]
            first, second = two_object_token_indices(c, minilm_tokenizer)
            for k, per in enumerate((first, second)):
                for attribute, indices in per.items():
                    word = minilm_tokenizer.decode([ids[i] for i in indices]).replace(
                        " ", ""
                    )
                    expected = (
                        pair.background
                        if attribute == "background"
                        else getattr(pair.objects[k], attribute)
                    )
                    assert word == expected, (c.text, k, attribute)
            assert first["background"] == second["background"]
            assert not set(first["color"]) & set(second["color"])


def test_longest_two_object_caption_fits_the_toy_text_length(minilm_tokenizer):
    from latentlens.toy.text_encoder import MAX_TEXT_TOKENS

    longest = TwoObjectAttributes.of(
        ("triangle", "yellow", "large"),
        ("triangle", "purple", "small"),
        "vertical",
        "white",
    )
    lengths = [
        len(minilm_tokenizer(make_two_object_caption(longest, t).text)["input_ids"])
        for t in TWO_OBJECT_TEMPLATES_FOR["vertical"]
    ]
    lengths += [
        len(
            minilm_tokenizer(
                make_two_object_caption(longest.replace(layout="horizontal"), t).text
            )["input_ids"]
        )
        for t in TWO_OBJECT_TEMPLATES_FOR["horizontal"]
    ]
    assert max(lengths) <= MAX_TEXT_TOKENS


def test_sample_two_object_scenes_is_seeded_and_uses_training_pairs():
    a = sample_two_object_scenes(6, np.random.default_rng(1))
    b = sample_two_object_scenes(6, np.random.default_rng(1))
    assert [c.text for _, c in a] == [c.text for _, c in b]
    assert all(is_two_object_trained(s.attributes) for s, _ in a)
    assert all(parse_two_object_caption(c.text) == s.attributes for s, c in a)


def test_names_second_object_first_tells_the_untrained_word_order():
    from latentlens.shapes import (
        TWO_OBJECT_TEMPLATES,
        TWO_OBJECT_TEMPLATES_FOR,
        make_two_object_caption,
        names_second_object_first,
        two_object_training_combinations,
    )

    pairs = two_object_training_combinations()[:40]
    for template in range(len(TWO_OBJECT_TEMPLATES)):
        for pair in pairs:
            if template not in TWO_OBJECT_TEMPLATES_FOR[pair.layout]:
                continue
            text = make_two_object_caption(pair, template=template).text
            assert names_second_object_first(text) == (template in (1, 3, 5, 7)), (template, text)
    assert not names_second_object_first("a small red circle on the right on a gray background")  # one object
    assert not names_second_object_first("a red dog on the right")
