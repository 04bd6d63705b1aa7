"""Benchmark helpers: case spread, PSNR outside the masks, SDE of an edit."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from latentlens.editor.bench import attribute_sde, make_cases, psnr
from latentlens.errors import ConfigError


def test_cases_spread_evenly_over_the_five_attributes_and_are_reproducible():
    cases = make_cases(200, seed=0)
    assert Counter(c.attribute for c in cases) == {a: 40 for a in ("shape", "color", "size", "position", "background")}
    again = make_cases(200, seed=0)
    assert [(c.attributes, c.seed, c.pick) for c in cases] == [(c.attributes, c.seed, c.pick) for c in again]
    assert {c.attribute for c in make_cases(7, only_attribute="color")} == {"color"}
    with pytest.raises(ConfigError):
        make_cases(0)


def test_psnr_over_a_region():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    assert psnr(a, b) == 100.0
    b[0, 0] = 255  # one pixel fully wrong
    where = np.ones((4, 4), dtype=bool)
    expected = 10 * math.log10(255.0**2 / (255.0**2 / 16))
    assert psnr(a, b, where) == pytest.approx(expected)
    where[0, 0] = False
    assert psnr(a, b, where) == 100.0  # the changed pixel is excluded


def test_attribute_sde_pools_the_edits_of_one_attribute():
    x = np.zeros((4, 4, 3), dtype=np.uint8)
    region = np.zeros((4, 4), dtype=bool)
    region[:2] = True
    inside = x.copy()
    inside[:2] = 255  # only the region changed
    out = attribute_sde([(x, inside, region), (x, x, region)])
    assert out["sde"] == 1.0 and out["leakage"] == 0.0
    assert out["effectiveness"] == pytest.approx(3.0 / 2)  # D = 3 (RGB summed) on half the region pixels
    everywhere = np.full_like(x, 255)
    assert attribute_sde([(x, everywhere, region)])["sde"] == pytest.approx(0.5)
    assert math.isnan(attribute_sde([(x, x, region)])["sde"])  # an edit that did nothing has no SDE
