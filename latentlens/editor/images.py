"""Image input/output for the editor: load real images by a documented policy, save atomically.

Loading policy (:func:`load_image`):

1. decode with Pillow (PNG, JPEG, WebP, BMP, ...); a file that cannot be decoded is a
   :class:`~latentlens.errors.ConfigError` naming it;
2. convert to RGB: ``RGB`` as is; ``L``/``I``/``F`` (grey) → the grey value in all three channels;
   images with transparency (``RGBA``, ``LA``, ``P`` with a transparent index) are composited onto
   a **white** background; palette (``P``) and ``CMYK``/``YCbCr`` images are converted with Pillow;
3. centre-crop to the model's aspect ratio (square for every bundled model), cutting equally from
   both sides of the longer axis;
4. resize to the model's size (the toy model: 32×32) with Lanczos resampling (box filter when
   shrinking by more than 2×, to avoid aliasing).

Outputs are written to a temporary file in the destination folder and renamed into place, so an
interrupted run never leaves a partial image.

Example::

    img = load_image("photo.jpg", size=(32, 32))     # PIL RGB 32×32
    x = to_tensor(img)                               # [1, 3, 32, 32] in [-1, 1]
    save_image(to_pil(x)[0], "out.png")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from latentlens.atomicfile import replacing
from latentlens.errors import ConfigError

WHITE = (255, 255, 255)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB by the module's conversion rules (grey replicated, transparency onto white)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, WHITE + (255,))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    return image.convert("RGB")


def center_crop_resize(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Centre-crop ``image`` to the aspect of ``size`` = (height, width), then resize to it."""
    height, width = size
    w, h = image.size
    target_aspect = width / height
    if w / h > target_aspect:  # too wide: cut left and right
        new_w = max(1, round(h * target_aspect))
        left = (w - new_w) // 2
        image = image.crop((left, 0, left + new_w, h))
    elif w / h < target_aspect:  # too tall: cut top and bottom
        new_h = max(1, round(w / target_aspect))
        top = (h - new_h) // 2
        image = image.crop((0, top, w, top + new_h))
    if image.size != (width, height):
        shrink = image.size[0] / width
        resample = PIL.Image.Resampling.BOX if shrink > 2 else PIL.Image.Resampling.LANCZOS
        image = image.resize((width, height), resample=resample)
    return image


def load_image(source: Any, size: tuple[int, int] | None = None) -> PIL.Image.Image:
    """Load a path / PIL image / uint8 array ``[height, width, 3]`` as RGB, cropped and resized to ``size`` (H, W)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"The image {path} does not exist; give the path of a PNG or JPEG file.")
        try:
            with PIL.Image.open(path) as handle:
                handle.load()
                image = handle.copy()
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
            raise ConfigError(
                f"The image {path} cannot be decoded ({error}); give a valid PNG or JPEG file."
            ) from error
    elif isinstance(source, PIL.Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and 0.0 <= arr.min() and arr.max() <= 1.0:
                arr = (arr * 255.0 + 0.5).astype(np.uint8)
            else:
                raise ConfigError(
                    f"An image array must be uint8 [H, W, 3] (or floats in [0, 1]); got dtype {arr.dtype}."
                )
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ConfigError(f"An image array must have shape [H, W, 3]; got {arr.shape}.")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        image = PIL.Image.fromarray(arr, "RGBA" if arr.shape[-1] == 4 else "RGB")
    else:
        raise ConfigError(
            f"Cannot read an image from a {type(source).__name__}; give a file path, a PIL image or a uint8 array."
        )
    image = to_rgb(image)
    if size is not None:
        image = center_crop_resize(image, size)
    return image


def to_tensor(image: PIL.Image.Image | np.ndarray) -> torch.Tensor:
    """RGB image → float ``[1, 3, height, width]`` in [-1, 1]."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # [height, width, 3]
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float ``[batch, 3, height, width]`` in [-1, 1] → uint8 ``[batch, height, width, 3]`` (rounded)."""
    arr = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """Float ``[batch, 3, height, width]`` in [-1, 1] → a list of RGB PIL images."""
    return [PIL.Image.fromarray(a, "RGB") for a in to_uint8(images)]


def save_image(image: PIL.Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    if not path.parent.exists():
        if not path.parent.parent.exists():  # never create folders above the output's parent
            raise ConfigError(
                f"The folder {path.parent.parent} does not exist, so {path} cannot be written; create it first "
                "or choose another output path."
            )
        path.parent.mkdir(exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"Output {path} must end in .png, .jpg, .jpeg, .webp or .bmp.")
    with replacing(path) as tmp:
        image.save(tmp, format=fmt)
    return path


__all__ = ["center_crop_resize", "load_image", "save_image", "to_pil", "to_rgb", "to_tensor", "to_uint8"]
