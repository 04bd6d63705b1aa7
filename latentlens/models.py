"""Load a diffusion pipeline by name: the bundled toy model, a local folder, or a cached hub id.

Every latentlens command's ``--model`` goes through :func:`load_pipeline`.

Example::

    import latentlens
    pipe = latentlens.load_pipeline("toy")                        # bundled weights, offline
    pipe = latentlens.load_pipeline("/data/my-sd3-folder")        # any local diffusers pipeline folder
    pipe = latentlens.load_pipeline("stabilityai/stable-diffusion-3-medium-diffusers")   # must be cached
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentlens.errors import ConfigError, StoreError, UnknownNameError


def _toy_model_names() -> tuple[str, ...]:
    from latentlens.toy.architectures import BY_MODEL_NAME

    return tuple(BY_MODEL_NAME)


#: the bundled toy models' names: 'toy' (MM-DiT), 'toy-pixart', 'toy-unet'
TOY_NAMES = _toy_model_names()


def installed_toy_models() -> list[str]:
    """The toy models whose weights are installed here, in :data:`TOY_NAMES` order.

    Example: ``latentlens.installed_toy_models()`` → ``['toy', 'toy-pixart']`` before toy-unet is trained.
    """
    from latentlens.toy.architectures import BY_MODEL_NAME

    return [name for name, toy in BY_MODEL_NAME.items() if toy.installed()]


def _toy_pipeline_classes() -> tuple[str, ...]:
    from latentlens.toy.architectures import BY_PIPELINE_CLASS

    return tuple(BY_PIPELINE_CLASS)


def is_toy_model(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` names a toy model: ``"toy"`` or a folder holding a saved toy pipeline
    (``ToyPipeline``, ``ToyPixArtPipeline``, ``ToyUNetPipeline``)."""
    if str(name_or_path) in TOY_NAMES:
        return True
    index = Path(str(name_or_path)).expanduser() / "model_index.json"
    try:
        return json.loads(index.read_text()).get("_class_name") in _toy_pipeline_classes()
    except (OSError, ValueError, AttributeError):
        return False


_RESTORE_HINT = (
    "Restore the shipped weights with 'git checkout latentlens/toy/weights' (or reinstall latentlens), "
    "or retrain them with the command in latentlens/toy/weights/MODEL_CARD.md."
)


def _toy_weights_dir() -> Path:
    from latentlens.toy import WEIGHTS_DIR

    return WEIGHTS_DIR


def _check_pipeline_folder(folder: Path, restore_hint: str) -> dict[str, Any]:
    """Check ``model_index.json`` and each weights file of a pipeline folder; return the model index."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise StoreError(f"The pipeline file {index_path} is missing. {restore_hint}")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as error:
        raise StoreError(f"The pipeline file {index_path} is corrupt ({error}). {restore_hint}") from error
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        component = folder / name
        if not component.is_dir():
            raise StoreError(f"The pipeline folder {component} is missing. {restore_hint}")
        for weights in component.glob("*.safetensors"):
            _check_safetensors(weights, restore_hint)
        if (
            spec[1]
            and "Model" in spec[1]
            and not any(component.glob("*.safetensors"))
            and not any(component.glob("*.bin"))
        ):
            raise StoreError(
                f"The weights file of {name} is missing: expected {component / 'diffusion_pytorch_model.safetensors'}. "
                f"{restore_hint}"
            )
    return index


def _check_safetensors(path: Path, restore_hint: str) -> None:
    """Open a safetensors file's header; a truncated or garbled file (or a Git LFS pointer) is an error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            if keys:
                handle.get_slice(keys[-1])  # checks the header's offsets against the file
        size = path.stat().st_size
        with open(path, "rb") as raw:
            header_len = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise ValueError(f"the file has {size} bytes, its header describes {8 + header_len + end}")
    except Exception as error:
        raise StoreError(f"The weights file {path} is corrupt or incomplete ({error}). {restore_hint}") from error


def load_pipeline(
    name_or_path: str | Path = "toy",
    *,
    device: str | None = None,
    torch_dtype: Any = None,
    allow_download: bool = False,
    **kwargs: Any,
) -> Any:
    """Load a pipeline: ``"toy"`` (the bundled MM-DiT), ``"toy-pixart"``, ``"toy-unet"``, a local diffusers
    folder, or a hub id.

    A hub id is loaded from the local Hugging Face cache only (``local_files_only=True``) unless
    ``allow_download=True``. Missing or corrupt weights raise :class:`~latentlens.errors.StoreError`
    naming the file and how to restore it; ``toy-pixart`` / ``toy-unet`` before their weights are
    installed name the ``latentlens train-toy --arch ... --install`` command that creates them.

    Example::

        pipe = load_pipeline("toy")
        pipe = load_pipeline("path/to/saved/pipeline", device="cuda", torch_dtype=torch.float16)
    """

    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise ConfigError(
            f"Model name {name_or_path!r} is not valid; use {', '.join(map(repr, TOY_NAMES))}, a folder path or a hub id."
        )
    name = str(name_or_path)
    if name in TOY_NAMES:
        from latentlens.toy.architectures import BY_MODEL_NAME

        toy = BY_MODEL_NAME[name]
        if toy.arch == "mmdit":
            pipe = _load_toy_folder(_toy_weights_dir(), _RESTORE_HINT, torch_dtype, **kwargs)
        else:
            toy.require_installed()
            hint = f"Reinstall them with `{toy.install_command()}`."
            pipe = _load_toy_folder(toy.weights_dir, hint, torch_dtype, bundled=True, **kwargs)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            hint = f"Check the folder {path} (it must be a saved diffusers pipeline)."
            index = _check_pipeline_folder(path, hint)
            if index.get("_class_name") in _toy_pipeline_classes():
                pipe = _load_toy_folder(path, hint, torch_dtype, **kwargs)
            else:
                pipe = _from_pretrained(str(path), torch_dtype=torch_dtype, local_files_only=True, **kwargs)
        elif path.exists():
            raise ConfigError(f"Model {name!r} is a file; give a toy model name, a pipeline folder or a hub id.")
        elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
            pipe = _from_pretrained(name, torch_dtype=torch_dtype, local_files_only=not allow_download, **kwargs)
        else:
            raise UnknownNameError(
                f"Model {name!r} is neither a toy model ({', '.join(TOY_NAMES)}), an existing pipeline folder, nor a "
                "hub id like 'owner/name'."
            )
    if torch_dtype is not None:
        _cast_components(pipe, torch_dtype)
    if device is not None:
        pipe.to(device)
    from latentlens.weights import screen_first_outputs

    screen_first_outputs(pipe)  # corrupt weights fail loudly on the first call, naming the component
    return pipe


def _load_toy_folder(folder: Path, hint: str, torch_dtype: Any, *, bundled: bool = False, **kwargs: Any) -> Any:
    """A saved toy pipeline folder (any toy architecture; the class is read from its ``model_index.json``)."""
    import torch

    from latentlens.toy.architectures import BY_PIPELINE_CLASS
    from latentlens.toy.pipeline import PIPELINE_CLASSES

    index = _check_pipeline_folder(folder, hint)
    from latentlens.weights import verify_checksums

    verify_checksums(folder, hint, required=bundled or folder.resolve() == _toy_weights_dir().resolve())
    arch = BY_PIPELINE_CLASS.get(str(index.get("_class_name")), BY_PIPELINE_CLASS["ToyPipeline"]).arch
    try:
        pipe = PIPELINE_CLASSES[arch].from_pretrained(str(folder), dtype=torch_dtype or torch.float32, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise StoreError(f"The toy pipeline in {folder} cannot be loaded ({error}). {hint}") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cast_components(pipe: Any, torch_dtype: Any) -> None:
    """Cast every model component left in another floating dtype to ``torch_dtype``.

    diffusers loads a model's weights without casting them when ``accelerate`` is missing (its
    ``low_cpu_mem_usage=False`` path assigns the checkpoint's tensors), so a float32 checkpoint stays
    float32 beside components that were cast, and the first call fails on mixed dtypes. Components that
    keep modules in float32 on purpose (``_keep_in_fp32_modules``) and quantized ones are left as loaded.
    """
    import torch

    components = getattr(pipe, "components", None) or {}
    for component in components.values():
        if not isinstance(component, torch.nn.Module) or getattr(component, "_keep_in_fp32_modules", None):
            continue
        if getattr(component, "is_quantized", False):
            continue
        if any(p.is_floating_point() and p.dtype != torch_dtype for p in component.parameters()):
            # torch's own cast: diffusers' ModelMixin.to warns about float32 modules on every dtype cast
            torch.nn.Module.to(component, dtype=torch_dtype)


def _from_pretrained(name: str, **kwargs: Any) -> Any:
    from diffusers import DiffusionPipeline

    dtype = kwargs.pop("torch_dtype", None)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return DiffusionPipeline.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        if kwargs.get("local_files_only"):
            raise StoreError(
                f"The pipeline {name!r} could not be loaded from local files ({error}). Download it first "
                "(`huggingface-cli download NAME`, or load_pipeline(NAME, allow_download=True) in Python)."
            ) from error
        raise StoreError(f"The pipeline {name!r} could not be loaded ({error}).") from error
