"""Direction: validation, save/load round trip, width checks."""

from __future__ import annotations

import json

import pytest
import torch

from latentlens.direction import Direction
from latentlens.errors import ConfigError, LatentlensError, StoreError


def _direction() -> Direction:
    return Direction(
        torch.arange(8, dtype=torch.float64) - 3.5,
        site="blocks.3.resid_out.img",
        steps=[2, 3],
        tokens=None,
        provenance={"method": "class_mean", "attribute": "color", "from": "red", "to": "blue", "accuracy": 0.97},
    )


def test_save_load_round_trip(tmp_path):
    d = _direction()
    tensor_path, json_path = d.save(tmp_path / "sub" / "red_to_blue")
    assert tensor_path.name == "red_to_blue.safetensors" and json_path.name == "red_to_blue.json"
    for path in (tmp_path / "sub" / "red_to_blue", tensor_path, json_path):
        loaded = Direction.load(path)
        assert torch.equal(loaded.vector, d.vector)
        assert loaded.vector.dtype == torch.float32
        assert (loaded.site, loaded.steps, loaded.tokens) == ("blocks.3.resid_out.img", [2, 3], None)
        assert loaded.provenance == d.provenance
    meta = json.loads(json_path.read_text())
    assert meta["dim"] == 8 and meta["stream"] == "img"


def test_views():
    d = _direction()
    assert d.dim == 8 and d.block == 3 and d.stream == "img"
    assert Direction(torch.ones(4), site="text.tokens").stream == "txt"
    assert Direction(torch.ones(4), site="blocks.0.resid_out.txt").stream == "txt"
    unit = d.normalized()
    assert abs(unit.norm - 1.0) < 1e-6 and unit.provenance["original_norm"] == pytest.approx(d.norm)
    assert torch.allclose((2 * d).vector, d.vector * 2)
    assert d.cosine(d.scaled(-3)) == pytest.approx(-1.0)


def test_fits_and_check_fits():
    d = _direction()
    assert d.fits(8) and not d.fits(16)
    d.check_fits(8)
    with pytest.raises(ConfigError, match=r"width 8.*width 16"):
        d.check_fits(16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vector": torch.ones(2, 3, 4)}, r"\[dim\] or \[tokens, dim\]"),
        ({"vector": torch.tensor([1.0, float("nan")])}, "NaN"),
        ({"site": "blocks 3"}, "site"),
        ({"steps": [-1]}, "non-negative"),
        ({"tokens": ["a"]}, "integers"),
    ],
)
def test_bad_values_raise_config_error(kwargs, message):
    args = {"vector": torch.ones(4), "site": "blocks.0.resid_out.img"} | kwargs
    with pytest.raises(ConfigError, match=message):
        Direction(**args)


def test_load_missing_file_is_store_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Direction.load(tmp_path / "nothing")
    assert issubclass(StoreError, LatentlensError)
