"""Probe specs: which prompts to record so that an attribute can be probed, validated before any compute.

A spec is a YAML file in ``probes/``. Two kinds exist.

**Template specs** (any model) list attributes with their values (and, optionally, the
phrase each value is written as), prompt templates with one ``{attribute}`` field per
attribute, and seeds. The prompts are the full factorial (or a seeded sample of it)::

    name: scenes
    attributes:
      season: {spring: "in spring", summer: "in summer", autumn: "in autumn", winter: "in winter"}
      time_of_day: [morning, noon, sunset, night]     # a list: the value is its own phrase
    templates:
      - "a photo of a village street {season} at {time_of_day}"
    seeds: {start: 0, count: 3}      # or a list [0, 1, 2]
    sample: {n: 40, seed: 0}         # optional; default: every combination
    min_samples_per_class: 10        # optional, default 10
    record: {num_inference_steps: 28} # optional; passed on to the recorder untouched

**Shapes-world specs** (``world: shapes``) take values and captions from
:mod:`latentlens.shapes`::

    name: shapes
    world: shapes
    attributes: [shape, color, size, position, background]   # or {color: [red, blue], ...}
    combinations: training     # training | held_out | all
    samples: 1000
    captions: varied           # varied | canonical | a template index
    seed: 0                    # seeds the sampling; sample i is generated with noise seed i

**Two-object specs** (``world: shapes2``, world v2) label each object's attributes by its
slot: ``first_shape, first_color, first_size`` (the left or top object), ``second_shape, ...``,
plus ``layout`` (horizontal | vertical) and ``background``; ``combinations`` is
training | held_out | all of the two-object split, ``captions`` varied | canonical | a
two-object template index | a list of indices (one drawn per sample, among those that describe the
scene's layout; ``[0, 2, 4]`` are the templates toy v2 was trained on); the other fields are as for
``world: shapes``.

Every mistake (a missing field, an attribute with a single value, too few samples per
class, a template that names an unknown attribute) raises
:class:`~latentlens.errors.ConfigError` naming the file, line and field.

Example::

    from latentlens import load_probe_spec
    spec = load_probe_spec("probes/shapes.yaml")
    for prompt, seed, labels in spec.prompts()[:2]:
        print(seed, labels["color"], prompt)
"""

from __future__ import annotations

import itertools
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from latentlens.errors import ConfigError

DEFAULT_MIN_SAMPLES_PER_CLASS = 10
_TOP_LEVEL_TEMPLATE = {
    "name",
    "description",
    "model",
    "attributes",
    "templates",
    "seeds",
    "sample",
    "min_samples_per_class",
    "record",
}
# Labels of a two-object spec: each object's own attributes by slot, then the scene's.
TWO_OBJECT_LABELS: tuple[str, ...] = (
    "first_shape",
    "first_color",
    "first_size",
    "second_shape",
    "second_color",
    "second_size",
    "layout",
    "background",
)
_TOP_LEVEL_SHAPES = {
    "name",
    "description",
    "model",
    "world",
    "attributes",
    "combinations",
    "samples",
    "captions",
    "seed",
    "canvas",
    "min_samples_per_class",
    "record",
}


class ProbeSample(NamedTuple):
    """One prompt to record: ``prompt, seed, labels = sample``."""

    prompt: str
    seed: int
    labels: dict[str, str]


@dataclass
class ProbeSpec:
    """A validated probe spec. Build it with :func:`load_probe_spec` or :meth:`from_dict`.

    Attributes:
        name: the spec's name (file stem by default).
        attributes: attribute -> its values, in order (class index = position).
        world: ``"shapes"`` for shapes-world specs, else ``None``.
        model: the pipeline the spec was written for (a hint, e.g. ``"toy"``), or ``None``.
        record: options passed untouched to the recorder (steps, guidance, sites...).
        min_samples_per_class: the smallest class size the spec guarantees.
    """

    name: str
    attributes: dict[str, tuple[str, ...]]
    world: str | None = None
    model: str | None = None
    description: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    min_samples_per_class: int = DEFAULT_MIN_SAMPLES_PER_CLASS
    source: str = "<dict>"
    _samples: list[ProbeSample] = field(default_factory=list, repr=False)

    def prompts(self) -> list[ProbeSample]:
        """Every ``(prompt, seed, labels)`` to record, in a fixed order."""
        return list(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def class_counts(self) -> dict[str, dict[str, int]]:
        """attribute -> value -> number of samples."""
        return {
            a: {v: sum(1 for s in self._samples if s.labels[a] == v) for v in values}
            for a, values in self.attributes.items()
        }

    def labels(self, attribute: str) -> np.ndarray:
        """Class indices (into ``attributes[attribute]``) of every sample, ``[sample]`` int64."""
        if attribute not in self.attributes:
            raise ConfigError(
                f"Spec {self.name!r} has no attribute {attribute!r}; it has: {', '.join(self.attributes)}."
            )
        index = {v: i for i, v in enumerate(self.attributes[attribute])}
        return np.array([index[s.labels[attribute]] for s in self._samples], dtype=np.int64)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>", lines: dict[tuple, int] | None = None) -> ProbeSpec:
        """Validate a parsed spec (the YAML document as Python objects)."""
        return _Validator(source, lines or {}).spec(data)


def load_probe_spec(path: str | Path) -> ProbeSpec:
    """Read and validate a probe spec YAML file (nothing is computed before it validates).

    Example: ``load_probe_spec("probes/portraits.yaml").prompts()``.
    """
    path = Path(path)
    if not path.is_file():
        shipped = sorted(p.name for p in _shipped_dir().glob("*.yaml")) if _shipped_dir().is_dir() else []
        hint = f" Shipped specs (in {_shipped_dir()}): {', '.join(shipped)}." if shipped else ""
        raise ConfigError(f"Probe spec {str(path)!r} does not exist.{hint}")
    from latentlens.textfile import read_text

    text = read_text(path, what="Probe spec")
    try:
        data = yaml.safe_load(text)
        lines = _line_map(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}{where}: the spec is not valid YAML ({problem}).") from None
    spec = ProbeSpec.from_dict(data, source=str(path), lines=lines)
    if spec.name == "":
        spec.name = path.stem
    return spec


def _shipped_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "probes"


def _line_map(node: yaml.Node | None, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """(key, key, index, ...) -> 1-based line of that node in the YAML text."""
    out = {} if out is None else out
    if node is None:
        return out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
            out[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)
    return out


class _Validator:
    def __init__(self, source: str, lines: dict[tuple, int]) -> None:
        self.source = source
        self.lines = lines

    def checked_values(self, path: tuple, name: str, values: Any, valid: Sequence[str]) -> tuple[str, ...]:
        """The listed values of attribute ``name`` (all of ``valid`` when None), each checked against ``valid``."""
        if values is None:
            values = list(valid)
        if not isinstance(values, list):
            raise self.fail(path, f"values of '{name}' must be a list.")
        for i, v in enumerate(values):
            if v not in valid:
                raise self.fail(path + (i,), f"unknown {name} {v!r}; use one of: {', '.join(valid)}.")
        return tuple(values)

    def fail(self, path: tuple, message: str) -> ConfigError:
        line = None
        probe: tuple | None = path
        while line is None and probe is not None:
            line = self.lines.get(probe)
            probe = probe[:-1] if probe else None
        field_name = ".".join(str(p) for p in path) or "(top level)"
        where = f"{self.source}" + (f" line {line}" if line is not None else "")
        return ConfigError(f"{where}, field '{field_name}': {message}")

    # -------------------------------------------------------------- helpers
    def require(self, data: dict, key: str, path: tuple, what: str) -> Any:
        if key not in data or data[key] is None:
            raise self.fail(path, f"missing required field '{key}' ({what}).")
        return data[key]

    def positive_int(self, value: Any, path: tuple, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(path, f"expected an integer >= {minimum}, got {value!r}.")
        return value

    def seeds(self, value: Any, path: tuple) -> list[int]:
        if isinstance(value, dict):
            unknown = set(value) - {"start", "count"}
            if unknown or "count" not in value:
                raise self.fail(path, "seeds must be a list of integers or {start: S, count: N}.")
            start = value.get("start", 0)
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise self.fail(path + ("start",), f"expected an integer >= 0, got {start!r}.")
            count = self.positive_int(value["count"], path + ("count",))
            return list(range(start, start + count))
        if isinstance(value, int) and not isinstance(value, bool):
            return [self.positive_int(value, path, minimum=0)]
        if not isinstance(value, list) or not value:
            raise self.fail(path, "seeds must be a non-empty list of integers or {start: S, count: N}.")
        for i, s in enumerate(value):
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise self.fail(path + (i,), f"seed {s!r} is not a non-negative integer.")
        if len(set(value)) != len(value):
            raise self.fail(path, "seeds contain duplicates; each seed must appear once.")
        return list(value)

    def check_unknown(self, data: dict, allowed: set[str], kind: str) -> None:
        unknown = sorted(set(map(str, data)) - allowed)
        if unknown:
            raise self.fail(
                (unknown[0],),
                f"unknown field '{unknown[0]}' in a {kind} spec; allowed fields: {', '.join(sorted(allowed))}.",
            )

    def check_classes(self, attributes: dict[str, tuple[str, ...]]) -> None:
        for name, values in attributes.items():
            if len(values) < 2:
                only = f" ({values[0]!r})" if values else ""
                raise self.fail(
                    ("attributes", name),
                    f"attribute '{name}' has {len(values)} value{'' if len(values) == 1 else 's'}{only}; "
                    "a probe needs at least 2 classes: add another value or drop the attribute.",
                )

    def check_counts(self, spec: ProbeSpec, fix: str) -> None:
        need = spec.min_samples_per_class
        for attribute, counts in spec.class_counts().items():
            value, have = min(counts.items(), key=lambda kv: kv[1])
            if have < need:
                raise self.fail(
                    ("attributes", attribute),
                    f"attribute '{attribute}' value '{value}' gets {have} sample{'s' * (have != 1)}, but a probe "
                    f"needs at least {need} per class (min_samples_per_class); {fix}",
                )

    # ------------------------------------------------------------------ spec
    def spec(self, data: Any) -> ProbeSpec:
        if not isinstance(data, dict):
            raise self.fail((), f"a probe spec must be a YAML mapping, got {type(data).__name__}.")
        world = data.get("world")
        if world is not None and world not in ("shapes", "shapes2"):
            raise self.fail(
                ("world",), f"unknown world {world!r}; the built-in worlds are 'shapes' and 'shapes2' (two objects)."
            )
        common: dict[str, Any] = {
            "name": str(data.get("name") or ""),
            "description": str(data.get("description") or ""),
            "model": None if data.get("model") is None else str(data["model"]),
            "source": self.source,
        }
        record = data.get("record") or {}
        if not isinstance(record, dict):
            raise self.fail(("record",), "record must be a mapping of recorder options.")
        common["record"] = dict(record)
        if "min_samples_per_class" in data:
            common["min_samples_per_class"] = self.positive_int(
                data["min_samples_per_class"], ("min_samples_per_class",), minimum=2
            )
        if world == "shapes":
            return self.shapes_spec(data, common)
        if world == "shapes2":
            return self.shapes2_spec(data, common)
        return self.template_spec(data, common)

    def template_spec(self, data: dict, common: dict[str, Any]) -> ProbeSpec:
        self.check_unknown(data, _TOP_LEVEL_TEMPLATE, "template")
        raw = self.require(data, "attributes", ("attributes",), "a mapping attribute -> values")
        if not isinstance(raw, dict) or not raw:
            raise self.fail(("attributes",), "attributes must be a non-empty mapping attribute -> values.")
        attributes: dict[str, tuple[str, ...]] = {}
        phrases: dict[str, dict[str, str]] = {}
        for name, values in raw.items():
            path = ("attributes", name)
            if not isinstance(name, str) or not name.isidentifier():
                raise self.fail(path, f"attribute name {name!r} must be an identifier (letters, digits, _).")
            if values is None:
                raise self.fail(path, f"attribute '{name}' has no values; list at least 2.")
            if isinstance(values, list):
                pairs = [(v, v) for v in values]
            elif isinstance(values, dict):
                pairs = list(values.items())
            else:
                raise self.fail(path, f"values of '{name}' must be a list or a mapping value -> phrase.")
            for i, (value, phrase) in enumerate(pairs):
                if not isinstance(value, (str, int)) or isinstance(value, bool):
                    raise self.fail(path + (i,), f"value {value!r} of '{name}' must be a string.")
                if not isinstance(phrase, (str, int)) or isinstance(phrase, bool):
                    raise self.fail(path + (str(value),), f"phrase of '{name}={value}' must be a string.")
            values_t = tuple(str(v) for v, _ in pairs)
            if len(set(values_t)) != len(values_t):
                dup = next(v for v, c in Counter(values_t).items() if c > 1)
                raise self.fail(path, f"attribute '{name}' lists value '{dup}' twice.")
            attributes[name] = values_t
            phrases[name] = {str(v): str(p) for v, p in pairs}
        self.check_classes(attributes)

        templates = self.require(data, "templates", ("templates",), "prompt templates with {attribute} fields")
        if isinstance(templates, str):
            templates = [templates]
        if not isinstance(templates, list) or not templates:
            raise self.fail(("templates",), "templates must be a non-empty list of strings.")
        for i, template in enumerate(templates):
            if not isinstance(template, str):
                raise self.fail(("templates", i), f"template {template!r} is not a string.")
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as error:
                raise self.fail(("templates", i), f"template {template!r} is malformed ({error}).") from None
            for f in fields:
                if f not in attributes:
                    raise self.fail(
                        ("templates", i),
                        f"template names '{{{f}}}', which is not an attribute; attributes: {', '.join(attributes)}.",
                    )
            for a in attributes:
                if a not in fields:
                    raise self.fail(
                        ("templates", i),
                        f"template {template!r} does not mention attribute '{a}'; add '{{{a}}}' so the prompt "
                        "carries its label.",
                    )
        seeds = self.seeds(self.require(data, "seeds", ("seeds",), "a list of seeds or {start, count}"), ("seeds",))

        names = list(attributes)
        combos = list(itertools.product(*(attributes[a] for a in names)))
        sample = data.get("sample")
        if sample is not None:
            if not isinstance(sample, dict) or "n" not in sample:
                raise self.fail(("sample",), "sample must be {n: N, seed: S}.")
            n = self.positive_int(sample["n"], ("sample", "n"))
            if n > len(combos):
                raise self.fail(("sample", "n"), f"sample n={n} exceeds the {len(combos)} combinations.")
            rng = np.random.Generator(np.random.PCG64(int(sample.get("seed", 0))))
            chosen = sorted(int(i) for i in rng.choice(len(combos), size=n, replace=False))
            combos = [combos[i] for i in chosen]
        samples: list[ProbeSample] = []
        for combo in combos:
            labels = dict(zip(names, combo))
            fill = {a: phrases[a][v] for a, v in labels.items()}
            for template in templates:
                prompt = template.format(**fill)
                for seed in seeds:
                    samples.append(ProbeSample(prompt, seed, dict(labels)))
        spec = ProbeSpec(attributes=attributes, _samples=samples, **common)
        self.check_counts(spec, "add seeds or templates, or drop 'sample'.")
        return spec

    def shapes_spec(self, data: dict, common: dict[str, Any]) -> ProbeSpec:
        from latentlens import shapes

        self.check_unknown(data, _TOP_LEVEL_SHAPES, "shapes-world")
        raw = data.get("attributes", list(shapes.ATTRIBUTES))
        if isinstance(raw, list):
            raw = {a: None for a in raw}
        if not isinstance(raw, dict) or not raw:
            raise self.fail(
                ("attributes",),
                "attributes must be a list of shapes-world attributes or a mapping attribute -> values.",
            )
        attributes: dict[str, tuple[str, ...]] = {}
        for name, values in raw.items():
            path = ("attributes", name)
            if name not in shapes.ATTRIBUTES:
                raise self.fail(path, f"unknown shapes-world attribute {name!r}; use: {', '.join(shapes.ATTRIBUTES)}.")
            attributes[name] = self.checked_values(path, name, values, shapes.VALUES[name])
        self.check_classes(attributes)

        which = data.get("combinations", "training")
        pools = {
            "training": shapes.training_combinations,
            "held_out": shapes.held_out_combinations,
            "all": shapes.all_combinations,
        }
        if which not in pools:
            raise self.fail(("combinations",), f"combinations {which!r} is not one of: {', '.join(pools)}.")
        pool = [c for c in pools[which]() if all(getattr(c, a) in v for a, v in attributes.items())]
        if not pool:
            raise self.fail(("attributes",), "no shapes-world combination matches the listed values.")
        n = self.positive_int(self.require(data, "samples", ("samples",), "how many prompts to record"), ("samples",))
        captions = data.get("captions", "varied")
        if captions not in ("varied", "canonical") and not (
            isinstance(captions, int) and not isinstance(captions, bool) and 0 <= captions < len(shapes.TEMPLATES)
        ):
            raise self.fail(
                ("captions",),
                f"captions {captions!r} must be 'varied', 'canonical' or a template index 0..{len(shapes.TEMPLATES) - 1}.",
            )
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise self.fail(("seed",), f"seed must be a non-negative integer, got {seed!r}.")
        if "canvas" in data:
            common["record"].setdefault("canvas", self.positive_int(data["canvas"], ("canvas",)))

        # Balanced: walk the pool in shuffled passes, so every combination occurs
        # floor(n / len(pool)) or one more times.
        rng = np.random.Generator(np.random.PCG64(seed))
        order: list[int] = []
        while len(order) < n:
            order.extend(int(i) for i in rng.permutation(len(pool)))
        samples = []
        for i, k in enumerate(order[:n]):
            combo = pool[k]
            if captions == "varied":
                caption = shapes.make_caption(combo, rng=rng)
            elif captions == "canonical":
                caption = shapes.make_caption(combo)
            else:
                caption = shapes.make_caption(combo, template=int(captions))
            samples.append(ProbeSample(caption.text, i, combo.as_dict()))  # noise seed = sample index
        spec = ProbeSpec(attributes=attributes, world="shapes", _samples=samples, **common)
        self.check_counts(spec, "raise 'samples' or restrict the values.")
        return spec

    def shapes2_spec(self, data: dict, common: dict[str, Any]) -> ProbeSpec:
        from latentlens import shapes

        self.check_unknown(data, _TOP_LEVEL_SHAPES, "two-object shapes-world")
        raw = data.get("attributes", list(TWO_OBJECT_LABELS))
        if isinstance(raw, list):
            raw = {a: None for a in raw}
        if not isinstance(raw, dict) or not raw:
            raise self.fail(
                ("attributes",), "attributes must be a list of two-object labels or a mapping label -> values."
            )
        attributes: dict[str, tuple[str, ...]] = {}
        for name, values in raw.items():
            path = ("attributes", name)
            if name not in TWO_OBJECT_LABELS:
                raise self.fail(path, f"unknown two-object label {name!r}; use: {', '.join(TWO_OBJECT_LABELS)}.")
            valid = shapes.LAYOUTS if name == "layout" else shapes.VALUES[name.split("_", 1)[-1]]
            attributes[name] = self.checked_values(path, name, values, valid)
        self.check_classes(attributes)

        which = data.get("combinations", "training")
        pools = {
            "training": shapes.two_object_training_combinations,
            "held_out": shapes.two_object_held_out_combinations,
            "all": shapes.all_two_object_combinations,
        }
        if which not in pools:
            raise self.fail(("combinations",), f"combinations {which!r} is not one of: {', '.join(pools)}.")
        pool = [(c, two_object_labels(c)) for c in pools[which]()]
        pool = [(c, labels) for c, labels in pool if all(labels[a] in v for a, v in attributes.items())]
        if not pool:
            raise self.fail(("attributes",), "no two-object combination matches the listed values.")
        n = self.positive_int(self.require(data, "samples", ("samples",), "how many prompts to record"), ("samples",))
        captions = data.get("captions", "varied")
        n_templates = len(shapes.TWO_OBJECT_TEMPLATES)

        def is_index(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_templates

        if not (
            captions in ("varied", "canonical")
            or is_index(captions)
            or (isinstance(captions, list) and captions and all(is_index(t) for t in captions))
        ):
            raise self.fail(
                ("captions",),
                f"captions {captions!r} must be 'varied', 'canonical', a two-object template index 0..{n_templates - 1} "
                "or a list of such indices (drawn at random per sample).",
            )
        chosen: tuple[int, ...] | None = (
            (captions,) if is_index(captions) else tuple(captions) if isinstance(captions, list) else None
        )
        if chosen is not None:
            pool = [(c, labels) for c, labels in pool if set(chosen) & set(shapes.TWO_OBJECT_TEMPLATES_FOR[c.layout])]
            if not pool:
                raise self.fail(
                    ("captions",), f"two-object templates {list(chosen)} describe none of the chosen layouts."
                )
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise self.fail(("seed",), f"seed must be a non-negative integer, got {seed!r}.")
        if "canvas" in data:
            common["record"].setdefault("canvas", self.positive_int(data["canvas"], ("canvas",)))

        rng = np.random.Generator(np.random.PCG64(seed))
        order: list[int] = []
        while len(order) < n:
            order.extend(int(i) for i in rng.permutation(len(pool)))
        samples = []
        for i, k in enumerate(order[:n]):
            combo, labels = pool[k]
            if chosen is not None:
                usable = [t for t in chosen if t in shapes.TWO_OBJECT_TEMPLATES_FOR[combo.layout]]
                template = usable[int(rng.integers(len(usable)))] if len(usable) > 1 else usable[0]
                caption = shapes.make_two_object_caption(combo, template=template)
            elif captions == "varied":
                caption = shapes.make_two_object_caption(combo, rng=rng)
            else:
                caption = shapes.make_two_object_caption(combo)
            samples.append(ProbeSample(caption.text, i, {a: labels[a] for a in attributes}))
        spec = ProbeSpec(attributes=attributes, world="shapes2", _samples=samples, **common)
        self.check_counts(spec, "raise 'samples' or restrict the values.")
        return spec


def two_object_labels(pair: Any) -> dict[str, str]:
    """The labels a two-object spec gives a scene: ``{"first_shape": ..., ..., "layout": ..., "background": ...}``."""
    labels = {}
    for slot, obj in (("first", pair.first), ("second", pair.second)):
        for attribute in ("shape", "color", "size"):
            labels[f"{slot}_{attribute}"] = getattr(obj, attribute)
    labels["layout"] = pair.layout
    labels["background"] = pair.background
    return labels
