"""What the /editor page runs: load the run's model, edit a source image, measure the change.

The EMS editor of latentlens (:class:`latentlens.EMSEditor`, ``iterations`` =
the page's "steps") is used when the installed latentlens exports it. Without it, a sample of the run is edited by
regenerating it from its own prompt and seed with the direction added at its
site (:func:`latentlens.steer`) or, for a target text, with the target prompt
and the same seed; an uploaded image needs the EMS editor.

Example::

    out = run_edit(index, "shapes", EditRequest(sample=3, direction="color/blue", alphas=[4.0]))
    out.images[0]          # uint8 [height, width, 3], the edit at alpha=4
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import numpy as np

import latentlens
from latentlens.adapters import site_width

from dashboards import config
from dashboards.data import run_manifest, DashboardError, open_run, results

ProgressFn = Callable[[int, int, str], None]

ALLOWED_UPLOAD_FORMATS = ("PNG", "JPEG")


@dataclass
class EditRequest:
    """One edit: a source (a run sample or an upload id), a direction name or a target text, alphas."""

    sample: int | None = None
    upload: str | None = None
    direction: str | None = None
    target: str | None = None
    alphas: list[float] = field(default_factory=lambda: [1.0])
    steps: int | None = None


@dataclass
class EditOutput:
    """Before/after images (uint8 ``[height, width, 3]``), one per alpha, and metrics."""

    source: np.ndarray
    images: list[np.ndarray]
    alphas: list[float]
    metrics: list[dict[str, Any]]
    method: str


def png_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of a uint8 ``[height, width, 3]`` image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def save_upload(contents: str, filename: str | None) -> tuple[str, tuple[int, int]]:
    """Validate an uploaded image (``dcc.Upload`` contents) and keep it as PNG; returns ``(upload_id, (w, h))``.

    Only PNG and JPEG up to the configured size and side are accepted; the image is decoded with
    PIL (never unpickled) and re-encoded, so nothing of the original file but its pixels is kept.
    """
    from PIL import Image, UnidentifiedImageError

    max_bytes = int(config.setting("upload_max_bytes"))
    max_side = int(config.setting("upload_max_side"))
    if not isinstance(contents, str) or "," not in contents:
        raise DashboardError("The upload is empty or not a file; choose a PNG or JPEG image.")
    header, _, payload = contents.partition(",")
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise DashboardError(
            f"{filename or 'The file'} is larger than {max_bytes // 1024} KiB; upload a smaller image."
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (ValueError, TypeError) as error:
        raise DashboardError(f"{filename or 'The upload'} is not valid base64 data ({error}).") from None
    if len(raw) > max_bytes:
        raise DashboardError(
            f"{filename or 'The file'} is {len(raw) // 1024} KiB; the limit is {max_bytes // 1024} KiB."
        )
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            kind = probe.format
            size = probe.size
            probe.verify()
        if kind not in ALLOWED_UPLOAD_FORMATS:
            raise DashboardError(f"{filename or 'The upload'} is a {kind} file; only PNG and JPEG images are accepted.")
        if max(size) > max_side:
            raise DashboardError(
                f"{filename or 'The image'} is {size[0]}x{size[1]} pixels; the limit is {max_side} per side."
            )
        with Image.open(io.BytesIO(raw)) as image:
            rgb = image.convert("RGB")
    except DashboardError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise DashboardError(f"{filename or 'The upload'} is not a readable PNG or JPEG image ({error}).") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    data = buffer.getvalue()
    upload_id = hashlib.sha256(data).hexdigest()[:32]
    (config.upload_dir() / f"{upload_id}.png").write_bytes(data)
    return upload_id, size


def save_result_image(image: np.ndarray) -> str:
    """Keep an edit's image (uint8 ``[height, width, 3]``) as PNG in the results folder; returns its id."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    result_id = hashlib.sha256(data).hexdigest()[:32]
    (config.result_dir() / f"{result_id}.png").write_bytes(data)
    return result_id


def _load_upload(upload_id: str) -> np.ndarray:
    from PIL import Image

    if not isinstance(upload_id, str) or not upload_id.isalnum():
        raise DashboardError("The uploaded image id is not valid; upload the image again.")
    path = config.upload_dir() / f"{upload_id}.png"
    if not path.is_file():
        raise DashboardError("The uploaded image is no longer on the server; upload it again.")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def load_pipeline_for(model_id: str) -> Any:
    """The run's pipeline, through the configured loader (default :func:`latentlens.load_pipeline`)."""
    loader = config.setting("pipeline_loader") or latentlens.load_pipeline
    return loader(model_id)


def _as_uint8(image: Any) -> np.ndarray:
    if hasattr(image, "convert"):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return array


def edit_metrics(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """Pixel change, changed-pixel fraction and, for shapes-world images, the oracle's reading of both."""
    a = before.astype(np.float32) / 255.0
    b = after.astype(np.float32) / 255.0
    if a.shape != b.shape:
        from PIL import Image

        b = np.asarray(Image.fromarray(after).resize(before.shape[1::-1]), dtype=np.float32) / 255.0
    diff = np.abs(a - b).mean(axis=-1)  # [height, width]
    out: dict[str, Any] = {
        "mean |Δ|": round(float(diff.mean()), 4),
        "changed pixels": f"{float((diff > 0.1).mean()):.1%}",
    }
    try:
        from latentlens.shapes import read_attributes

        before_attr, after_attr = read_attributes(before).as_dict(), read_attributes(after).as_dict()
        changed = {k: f"{before_attr[k]} → {after_attr[k]}" for k in before_attr if before_attr[k] != after_attr[k]}
        out["oracle"] = ", ".join(f"{k}: {v}" for k, v in changed.items()) or "no attribute changed"
    except Exception:
        pass
    return out


def _ems_editor() -> Any:
    """latentlens' :class:`EMSEditor` when this installation provides it, else None."""
    try:
        return latentlens.EMSEditor
    except (AttributeError, ImportError):
        return None


def run_edit(index: Any, run_id: str, request: EditRequest, progress: ProgressFn | None = None) -> EditOutput:
    """Edit the request's source for every alpha; ``progress(done, total, text)`` is called along the way."""
    import torch

    progress = progress or (lambda done, total, text: None)
    run = open_run(index, run_id)
    manifest = run_manifest(run)
    model_id = str((manifest.get("model") or {}).get("id") or "")
    if not model_id:
        raise DashboardError(f"The run {run_id!r} does not name its model in manifest.json; it cannot be edited.")
    if request.direction is None and not (request.target or "").strip():
        raise DashboardError("Choose a direction or type a target description before running the editor.")
    if not request.alphas:
        raise DashboardError("Give at least one alpha.")
    direction = results(index, run_id).load_direction(request.direction) if request.direction else None
    progress(0, 1, f"loading model {model_id} …")
    pipe = load_pipeline_for(model_id)
    if direction is not None:
        width = site_width(pipe, direction.site)
        if width is not None:
            direction.check_fits(width, what=f"model {model_id!r}")
    steps = int(request.steps or config.setting("edit_steps"))

    prompts = manifest.get("prompts") or []
    seeds = manifest.get("seeds") or []
    source: np.ndarray
    prompt = ""
    seed = 0
    if request.upload:
        source = _load_upload(request.upload)
    else:
        sample = int(request.sample or 0)
        if not 0 <= sample < len(prompts):
            raise DashboardError(f"Sample {sample} is out of range; the run has samples 0..{len(prompts) - 1}.")
        prompt, seed = prompts[sample], int(seeds[sample]) if sample < len(seeds) else sample
        path = run.image_path(sample)
        if path.is_file():
            from latentlens.safepath import confined

            confined(path, index.root)  # a symlink out of the root is never read
        source = (
            np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(path).convert("RGB"))
            if path.is_file()
            else None
        )  # type: ignore[assignment]

    editor_cls = _ems_editor()
    total = len(request.alphas) * steps
    images: list[np.ndarray] = []
    if editor_cls is not None:
        method = "EMS"
        if source is None:
            raise DashboardError(f"Sample {request.sample} has no saved image to edit; re-record the run with images.")
        progress(0, total, "preparing the EMS editor …")
        editor = editor_cls(pipe, iterations=steps)
        for k, alpha in enumerate(request.alphas):
            progress(k * steps, total, f"EMS α={alpha:g} ({k + 1}/{len(request.alphas)})")
            result = editor.edit(
                source,
                target=None if direction is not None else request.target,
                source=prompt or None,
                alpha=float(alpha),
                direction=direction,
                steps=list(range(steps)) if direction is not None else None,
            )
            images.append(_as_uint8(result.image))
    else:
        if request.upload:
            raise DashboardError(
                "Editing an uploaded image needs latentlens' EMS editor (latentlens.edit), which this installation "
                "does not provide; choose a sample of the run as the source instead."
            )
        method = "steer" if direction is not None else "prompt swap"

        def generate(text: str, k: int, alpha: float) -> np.ndarray:
            def on_step(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                progress(k * steps + i + 1, total, f"{method} α={alpha:g}: step {i + 1}/{steps}")
                return kwargs

            generator = torch.Generator().manual_seed(seed)
            out = pipe(text, generator=generator, num_inference_steps=steps, callback_on_step_end=on_step)
            return _as_uint8(out.images[0])

        if source is None:
            source = generate(prompt, 0, 0.0)
        for k, alpha in enumerate(request.alphas):
            progress(k * steps, total, f"{method} α={alpha:g}")
            if direction is not None:
                cfg = ((direction.provenance or {}).get("validation") or {}).get("cfg", "both")  # as validated
                with latentlens.steer(
                    pipe, direction.site, direction.vector, alpha=float(alpha), steps=direction.steps, cfg=cfg
                ):
                    images.append(generate(prompt, k, float(alpha)))
            else:
                text = prompt if float(alpha) == 0.0 else str(request.target)
                images.append(generate(text, k, float(alpha)))
    progress(total, total, "done")
    metrics = [edit_metrics(source, image) for image in images]
    return EditOutput(
        source=source, images=images, alphas=[float(a) for a in request.alphas], metrics=metrics, method=method
    )


__all__ = ["EditRequest", "EditOutput", "run_edit", "save_upload", "save_result_image", "edit_metrics", "png_data_uri"]
