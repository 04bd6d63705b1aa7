"""Real-image loading: conversions (L, RGBA, P, 16-bit), centre crop + resize, decode errors, atomic save."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from latentlens.editor.images import load_image, save_image, to_pil, to_tensor
from latentlens.errors import ConfigError


def test_rgb_png_and_jpeg_load_at_the_model_size(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    for name in ("a.png", "a.jpg"):
        PIL.Image.fromarray(arr).save(tmp_path / name)
        img = load_image(tmp_path / name, size=(32, 32))
        assert img.mode == "RGB" and img.size == (32, 32)


def test_centre_crop_keeps_the_middle():
    arr = np.zeros((32, 96, 3), dtype=np.uint8)
    arr[:, 32:64] = 255  # white middle third of a wide image
    img = np.asarray(load_image(arr, size=(32, 32)))
    assert img.min() == 255  # the crop took exactly the middle square
    tall = np.zeros((96, 32, 3), dtype=np.uint8)
    tall[32:64] = 255
    assert np.asarray(load_image(tall, size=(16, 16))).min() == 255


def test_grey_is_replicated_and_transparency_goes_onto_white(tmp_path):
    PIL.Image.new("L", (8, 8), 77).save(tmp_path / "grey.png")
    grey = np.asarray(load_image(tmp_path / "grey.png"))
    assert grey.shape == (8, 8, 3) and (grey == 77).all()
    rgba = PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "rgba.png")
    out = np.asarray(load_image(tmp_path / "rgba.png"))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[4, 4]) == (255, 255, 255)
    pal = PIL.Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    assert tuple(np.asarray(load_image(tmp_path / "pal.png"))[3, 3]) == (10, 200, 30)
    sixteen = PIL.Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    sixteen.save(tmp_path / "16.png")
    assert np.asarray(load_image(tmp_path / "16.png")).min() == 255


def test_undecodable_and_missing_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ConfigError, match="cannot be decoded"):
        load_image(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="shape"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))


def test_tensor_round_trip_and_atomic_save(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    x = to_tensor(PIL.Image.fromarray(arr))
    assert x.shape == (1, 3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1
    back = to_pil(x)[0]
    assert np.array_equal(np.asarray(back), arr)
    path = save_image(back, tmp_path / "sub" / "out.png")
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["out.png"]
    with pytest.raises(ConfigError, match="must end in"):
        save_image(back, tmp_path / "out.tiff")
