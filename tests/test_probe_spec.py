"""Probe specs: the shipped specs load, and every bad case is refused before compute with a pointed message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from latentlens.analysis.spec import ProbeSpec, load_probe_spec
from latentlens.errors import ConfigError

PROBES = Path(__file__).resolve().parents[1] / "probes"

GOOD = """\
name: tiny
attributes:
  glasses:
    "yes": wearing glasses
    "no": without glasses
  hair: [blonde, black]
templates:
  - "a photo of a person {glasses} with {hair} hair"
  - "{hair}-haired person {glasses}"
seeds: {start: 0, count: 3}
min_samples_per_class: 6
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_template_spec_expands_full_factorial(tmp_path):
    spec = load_probe_spec(_write(tmp_path, GOOD))
    samples = spec.prompts()
    assert len(samples) == 2 * 2 * 2 * 3
    prompt, seed, labels = samples[0]
    assert prompt == "a photo of a person wearing glasses with blonde hair"
    assert seed == 0 and labels == {"glasses": "yes", "hair": "blonde"}
    assert spec.class_counts()["hair"] == {"blonde": 12, "black": 12}
    assert list(spec.labels("glasses")[:7]) == [0] * 6 + [0]
    with pytest.raises(ConfigError, match="no attribute 'age'"):
        spec.labels("age")


@pytest.mark.parametrize("name", ["shapes", "portraits", "scenes"])
def test_shipped_specs_are_valid(name):
    spec = load_probe_spec(PROBES / f"{name}.yaml")
    assert spec.name == name
    assert len(spec) >= 100
    for attribute, counts in spec.class_counts().items():
        assert len(counts) >= 2
        assert min(counts.values()) >= spec.min_samples_per_class, attribute


def test_shapes_spec_covers_world_and_balances_combinations():
    from latentlens import shapes

    spec = load_probe_spec(PROBES / "shapes.yaml")
    assert len(spec) == 1000 and set(spec.attributes) == set(shapes.ATTRIBUTES)
    training = set(shapes.training_combinations())
    combos = [shapes.Attributes(**s.labels) for s in spec.prompts()]
    assert set(combos) == training  # every training combination at least once
    for prompt, _seed, labels in spec.prompts()[:50]:
        assert shapes.parse_caption(prompt).as_dict() == labels
    assert len({s.seed for s in spec.prompts()}) == 1000
    assert len({s.prompt.split(" ")[0] for s in spec.prompts()}) > 3  # varied captions


def _error(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as info:
        load_probe_spec(_write(tmp_path, text))
    return str(info.value)


def test_missing_field_names_field_and_line(tmp_path):
    message = _error(tmp_path, GOOD.replace("seeds: {start: 0, count: 3}\n", ""))
    assert "missing required field 'seeds'" in message
    message = _error(tmp_path, GOOD.replace('  - "{hair}-haired person {glasses}"\n', '  - "{hair}-haired person"\n'))
    assert "line 9" in message and "does not mention attribute 'glasses'" in message


def test_single_class_attribute_is_refused(tmp_path):
    message = _error(tmp_path, GOOD.replace("  hair: [blonde, black]", "  hair: [blonde]"))
    assert "attribute 'hair' has 1 value ('blonde')" in message and "at least 2 classes" in message
    assert "line 6" in message


def test_too_few_samples_names_attribute_and_needed_count(tmp_path):
    message = _error(tmp_path, GOOD.replace("min_samples_per_class: 6", "min_samples_per_class: 40"))
    assert "attribute 'glasses'" in message and "gets 12 samples" in message and "at least 40 per class" in message


def test_shapes_spec_too_few_samples(tmp_path):
    message = _error(tmp_path, "world: shapes\nattributes: [color, size]\nsamples: 30\nmin_samples_per_class: 10\n")
    assert "attribute 'color'" in message and "at least 10 per class" in message and "line 2" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("world: shapes\nattributes: [colour]\nsamples: 10\n", "unknown shapes-world attribute 'colour'"),
        ("world: shapes\nattributes: {color: [red, pink]}\nsamples: 10\n", "unknown color 'pink'"),
        ("world: shapes\nsamples: 10\ncaptions: fancy\n", "line 3"),
        ("world: planets\n", "unknown world 'planets'"),
        ("attributes: {a: [x, y]}\ntemplates: ['{b} {a}']\nseeds: [0]\n", "'{b}', which is not an attribute"),
        ("attributes: {a: [x, y]}\ntemplates: ['{a}']\nseeds: [0, 0]\n", "duplicates"),
        ("attributes: {a: [x, y]}\ntemplates: ['{a}']\nseeds: [0]\nbogus: 1\n", "unknown field 'bogus'"),
        ("attributes: [a, b\n", "not valid YAML"),
        ("- just a list\n", "must be a YAML mapping"),
    ],
)
def test_bad_specs(tmp_path, text, expected):
    assert expected in _error(tmp_path, text)


def test_missing_file_lists_shipped_specs(tmp_path):
    with pytest.raises(ConfigError, match="shapes.yaml"):
        load_probe_spec(tmp_path / "nope.yaml")


def test_from_dict_without_file():
    spec = ProbeSpec.from_dict({"attributes": {"a": ["x", "y"]}, "templates": ["{a}"], "seeds": [0, 1],
                                "min_samples_per_class": 2, "name": "d"})
    assert [s.prompt for s in spec.prompts()] == ["x", "x", "y", "y"] and spec.source == "<dict>"
    with pytest.raises(ConfigError, match="gets 1 sample,"):
        ProbeSpec.from_dict({"attributes": {"a": ["x", "y"]}, "templates": ["{a}"], "seeds": [0]})


def test_two_object_spec_labels_each_objects_attributes():
    from latentlens import shapes

    spec = load_probe_spec(PROBES / "shapes2.yaml")
    assert spec.world == "shapes2" and len(spec) == 1200
    assert list(spec.attributes)[:3] == ["first_shape", "first_color", "first_size"]
    for counts in spec.class_counts().values():
        assert min(counts.values()) >= spec.min_samples_per_class
    for prompt, _seed, labels in spec.prompts()[:200]:
        pair = shapes.parse_two_object_caption(prompt)
        assert shapes.is_two_object_trained(pair)
        assert labels["first_color"] == pair.first.color and labels["second_shape"] == pair.second.shape
        assert labels["layout"] == pair.layout and labels["background"] == pair.background
        assert labels["first_color"] != labels["second_color"]
    # The bundled spec uses toy v2's training templates: the left/top object is always named first,
    # in all three of them.
    prompts = spec.prompts()
    assert all(p.index(l["first_color"]) < p.index(l["second_color"]) for p, _, l in prompts)
    assert {next(w for w in (" and ", " next to ", " above ") if w in p) for p, _, _ in prompts[:100]} == {
        " and ", " next to ", " above "
    }


def test_two_object_spec_varied_captions_name_either_object_first(tmp_path):
    spec = load_probe_spec(_write(tmp_path, "world: shapes2\nattributes: [layout]\nsamples: 100\ncaptions: varied\n"))
    firsts = {p.index(l["layout"] == "vertical" and "top" or "left") < p.index(
        l["layout"] == "vertical" and "bottom" or "right") for p, _, l in spec.prompts()}
    assert firsts == {True, False}
    only_next_to = load_probe_spec(_write(tmp_path, "world: shapes2\nattributes: [first_color]\nsamples: 120\ncaptions: [2]\n"))
    assert all(" next to " in p for p, _, _ in only_next_to.prompts())  # layouts the template cannot describe drop out


@pytest.mark.parametrize(
    "text, message",
    [
        ("world: shapes2\nattributes: [first_colour]\nsamples: 10\n", "unknown two-object label 'first_colour'"),
        ("world: shapes2\nattributes: {layout: [diagonal, vertical]}\nsamples: 10\n", "unknown layout 'diagonal'"),
        ("world: shapes2\nattributes: [layout]\nsamples: 10\ncaptions: 99\n", "template index 0..7"),
        ("world: shapes2\nattributes: [layout]\nsamples: 10\ncaptions: [0, 9]\n", "list of such indices"),
        ("world: shapes3\nsamples: 10\n", "shapes2"),
    ],
)
def test_two_object_spec_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_probe_spec(_write(tmp_path, text))
