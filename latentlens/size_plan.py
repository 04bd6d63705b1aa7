"""How many bytes a recording will write, known before any weight is loaded.

:func:`plan_record` reads only the pipeline's configs (``model_index.json``, the denoiser's
(transformer or UNet) and the VAE's ``config.json``), builds the denoiser on the ``meta`` device (no
memory, no weights), runs one denoiser call of the right shapes through :func:`latentlens.record` and
scales what it would keep by the recorded steps and samples. The store's layout (chunk padding,
bfloat16 stored as float32) is accounted for, so the estimate matches the written run folder.

Example::

    from latentlens.size_plan import plan_record
    plan = plan_record("toy", samples=100, sites="blocks.*.resid_out.*", out="runs/x")
    plan.total_bytes, plan.free_bytes, plan.fits
    plan.sites["blocks.0.resid_out.img"]   # bytes per sample
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import shutil
from pathlib import Path
from typing import Any

from latentlens.errors import ConfigError, StoreError

#: metadata written beside the data: zarr.json per array, and a manifest line per prompt (bytes, rough)
ARRAY_OVERHEAD = 1024
PROMPT_OVERHEAD = 256

_FLUX = ("FluxPipeline",)
_DENOISERS = ("transformer", "unet")  # the model_index.json key of the denoiser: DiTs, then UNets
_TEXT_PREFIX = {"StableDiffusion3Pipeline": 77}  # CLIP tokens in front of the T5 tokens


class DiskSpaceError(StoreError):
    """A recording would write more than its disk has free."""


@dataclasses.dataclass
class SizePlan:
    """What a recording would write: per-site bytes per sample, totals and the free disk space."""

    model: str
    out: str
    samples: int
    steps: int
    recorded_steps: int
    image_tokens: int
    text_tokens: int
    dtype: str
    sites: dict[str, int]  # name -> bytes per sample
    data_bytes: int
    image_bytes: int
    meta_bytes: int
    free_bytes: int
    batch_size: int = 4

    @property
    def host_bytes_per_batch(self) -> int:
        """Host memory one batch holds while it is recorded and the batch before it is written (an estimate)."""
        batch = max(1, min(self.batch_size, self.samples or 1))
        return int(self.bytes_per_sample * batch * HOST_BYTES_PER_RECORDED_BYTE)

    @property
    def bytes_per_sample(self) -> int:
        return sum(self.sites.values())

    @property
    def total_bytes(self) -> int:
        return self.data_bytes + self.image_bytes + self.meta_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.free_bytes

    def biggest(self, n: int = 3) -> list[tuple[str, int]]:
        """The ``n`` sites that write the most (name, bytes per sample)."""
        return sorted(self.sites.items(), key=lambda kv: -kv[1])[:n]

    def to_json(self) -> dict[str, Any]:
        """The ``latentlens record --dry-run --json`` document."""
        return {
            "model": self.model,
            "out": self.out,
            "samples": self.samples,
            "steps": self.steps,
            "recorded_steps": self.recorded_steps,
            "image_tokens": self.image_tokens,
            "text_tokens": self.text_tokens,
            "dtype": self.dtype,
            "bytes_per_sample": self.bytes_per_sample,
            "total_bytes": self.total_bytes,
            "data_bytes": self.data_bytes,
            "image_bytes": self.image_bytes,
            "meta_bytes": self.meta_bytes,
            "free_bytes": self.free_bytes,
            "fits": self.fits,
            "sites": dict(self.sites),
            "batch_size": self.batch_size,
            "host_bytes_per_batch": self.host_bytes_per_batch,
        }

    def summary(self) -> str:
        """A few human-readable lines."""
        top = ", ".join(f"{n} {human(b * self.samples)}" for n, b in self.biggest())
        return (
            f"{self.out}: {self.samples} samples × {human(self.bytes_per_sample)} = {human(self.total_bytes)} "
            f"(images {human(self.image_bytes)}); {human(self.free_bytes)} free; "
            f"{len(self.sites)} arrays, biggest: {top}; each batch of {self.batch_size} holds about "
            f"{human(self.host_bytes_per_batch)} of host memory"
        )

    def host_memory_warning(self, available: int | None) -> str | None:
        """A sentence when a batch would hold more host memory than ``available`` bytes (None: it fits, or unknown)."""
        if available is None or self.host_bytes_per_batch <= available:
            return None
        one = int(self.bytes_per_sample * HOST_BYTES_PER_RECORDED_BYTE)
        return (
            f"each batch of {self.batch_size} holds about {human(self.host_bytes_per_batch)} of host memory while it "
            f"is recorded and the batch before it is written, and this machine has {human(available)} available, so "
            f"the run may be killed for memory; lower --batch-size (1 holds about {human(one)}), record fewer sites "
            "or steps, or use --dtype float16 or --reduce mean_img_tokens."
        )


def human(n: float) -> str:
    """``1536`` → ``'1.5 KB'`` (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


# --------------------------------------------------------------------------- configs


def _config_folder(model: str) -> Path:
    """The folder holding ``model_index.json`` of ``model`` (toy, a local folder or a cached hub id)."""
    from latentlens.models import TOY_NAMES

    if model in TOY_NAMES:
        from latentlens.toy.architectures import BY_MODEL_NAME

        toy = BY_MODEL_NAME[model]
        if toy.arch != "mmdit":
            toy.require_installed()
        return toy.weights_dir
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(model, local_files_only=True, allow_patterns=["*.json"]))
        except Exception as error:
            raise StoreError(
                f"The configs of {model!r} are not in the local Hugging Face cache ({error}); download the model "
                "first (huggingface-cli download) or give a local pipeline folder."
            ) from error
    raise ConfigError(f"Model {model!r} is neither 'toy', an existing pipeline folder, nor a hub id like 'owner/name'.")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StoreError(f"The config file {path} cannot be read ({error}); check the pipeline folder.") from error


def _pipeline_class(name: str) -> Any:
    from latentlens.toy.architectures import BY_PIPELINE_CLASS

    if name in BY_PIPELINE_CLASS:
        from latentlens.toy.pipeline import PIPELINE_CLASSES

        return PIPELINE_CLASSES[BY_PIPELINE_CLASS[name].arch]
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ConfigError(f"The pipeline class {name!r} is unknown to diffusers {diffusers.__version__}.")
    return cls


def _call_default(cls: Any, name: str, fallback: Any) -> Any:
    try:
        parameter = inspect.signature(cls.__call__).parameters.get(name)
    except (TypeError, ValueError):
        return fallback
    if parameter is None or parameter.default is inspect.Parameter.empty or parameter.default is None:
        return fallback
    return parameter.default


def pipeline_defaults(model: str) -> dict[str, Any]:
    """The pipeline's own call defaults (``num_inference_steps``, ``guidance_scale``), from its class alone
    (its ``model_index.json`` names it; no transformer is built)."""
    index = _read_json(_config_folder(str(model)) / "model_index.json")
    cls = _pipeline_class(str(index.get("_class_name")))
    return {
        "num_inference_steps": int(_call_default(cls, "num_inference_steps", 28)),
        "guidance_scale": _call_default(cls, "guidance_scale", None),
    }


def config_transformer(model: str) -> Any:
    """``model``'s denoiser (transformer or UNet) built from its config on the meta device (no weights), e.g. for
    site names."""
    return meta_transformer(_config_folder(str(model)))[0]


@functools.lru_cache(maxsize=4)
def meta_transformer(folder: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(denoiser on the meta device, model index, VAE config)`` from a pipeline folder's configs alone.

    Cached per folder (the meta transformer holds no memory); callers must not modify it.
    """
    import diffusers
    import torch

    index = _read_json(folder / "model_index.json")
    subfolder = next((key for key in _DENOISERS if _component_class(index, key)), None)
    if subfolder is None:
        raise ConfigError(
            f"{folder}'s model_index.json names no denoiser ({' or '.join(_DENOISERS)}); check the pipeline folder."
        )
    class_name = _component_class(index, subfolder)
    cls = getattr(diffusers, str(class_name), None)
    if cls is None:
        raise ConfigError(f"The {subfolder} class {class_name!r} of {folder} is unknown to diffusers.")
    config = _read_json(folder / subfolder / "config.json")
    vae_path = folder / "vae" / "config.json"
    vae = _read_json(vae_path) if vae_path.is_file() else {}
    with torch.device("meta"):
        model = cls.from_config(config)
    return model.eval(), index, vae


def _component_class(index: dict[str, Any], key: str) -> str | None:
    """The class ``model_index.json`` names for component ``key`` (``["diffusers", "ClassName"]``), or None."""
    entry = index.get(key)
    if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str):
        return entry[1]
    return None


def _with_grid(ids: Any, grid: tuple[int, int]) -> Any:
    ids.latentlens_grid = grid  # meta image ids hold no values; the Flux adapter reads the grid from here
    return ids


def _meta_inputs(model: Any, pipe_class: str, height: int, width: int, factor: int, text: int) -> dict[str, Any]:
    """Keyword inputs of one transformer call (one row) on the meta device."""
    import torch

    cfg = model.config
    meta = {"device": "meta"}
    lh, lw = height // factor, width // factor
    if pipe_class in _FLUX or type(model).__name__ == "FluxTransformer2DModel":
        n = (lh // 2) * (lw // 2)
        inputs = {
            "hidden_states": torch.empty(1, n, cfg.in_channels, **meta),
            "encoder_hidden_states": torch.empty(1, text, cfg.joint_attention_dim, **meta),
            "pooled_projections": torch.empty(1, cfg.pooled_projection_dim, **meta),
            "timestep": torch.empty(1, **meta),
            "img_ids": _with_grid(torch.empty(n, 3, **meta), (lh // 2, lw // 2)),
            "txt_ids": torch.empty(text, 3, **meta),
        }
        if cfg.get("guidance_embeds"):
            inputs["guidance"] = torch.empty(1, **meta)
        return inputs
    if type(model).__name__ == "UNet2DConditionModel":
        width = cfg.get("cross_attention_dim")
        if not isinstance(width, int):
            # not a user error: `record` notes that it has no plan and records anyway; --dry-run reports it
            raise ValueError(f"the UNet's cross_attention_dim {width!r} is not one width")
        inputs = {
            "sample": torch.empty(1, cfg.in_channels, lh, lw, **meta),
            "timestep": torch.empty(1, **meta),
            "encoder_hidden_states": torch.empty(1, text, width, **meta),
        }
        if cfg.get("addition_embed_type") == "text_time":  # SDXL: pooled text + six size/crop ids
            ids = 6
            pooled = int(cfg.projection_class_embeddings_input_dim) - ids * int(cfg.addition_time_embed_dim)
            inputs["added_cond_kwargs"] = {
                "text_embeds": torch.empty(1, pooled, **meta),
                "time_ids": torch.empty(1, ids, **meta),
            }
        return inputs
    if type(model).__name__ == "PixArtTransformer2DModel":
        added = {"resolution": None, "aspect_ratio": None}
        if cfg.get("sample_size") == 128 and cfg.get("use_additional_conditions") is not False:
            added = {"resolution": torch.empty(1, 2, **meta), "aspect_ratio": torch.empty(1, 1, **meta)}
        return {
            "hidden_states": torch.empty(1, cfg.in_channels, lh, lw, **meta),
            "encoder_hidden_states": torch.empty(1, text, cfg.caption_channels, **meta),
            "timestep": torch.empty(1, **meta),
            "added_cond_kwargs": added,
        }
    return {
        "hidden_states": torch.empty(1, cfg.in_channels, lh, lw, **meta),
        "encoder_hidden_states": torch.empty(1, text, cfg.joint_attention_dim, **meta),
        "pooled_projections": torch.empty(1, cfg.pooled_projection_dim, **meta),
        "timestep": torch.empty(1, **meta),
    }


# --------------------------------------------------------------------------- the plan


def plan_record(
    model: str,
    *,
    samples: int,
    out: str | Path,
    sites: Any = None,
    attention: Any = None,
    steps: Any = None,
    cfg: str = "cond",
    tokens: Any = None,
    reduce: Any = None,
    dtype: Any = None,
    heads: str = "mean",
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 4,
    save_images: bool = True,
    max_sequence_length: int | None = None,
) -> SizePlan:
    """The :class:`SizePlan` of recording ``samples`` prompts of ``model`` into ``out`` (configs only).

    The arguments are those of :func:`latentlens.runs.record_prompts`. ``tokens`` given as words
    cannot be resolved without the tokenizer; they count as one token each.
    """
    import numpy as np
    import torch

    from latentlens import compat
    from latentlens.names import StepSelection
    from latentlens.recorder import record
    from latentlens.store import MAX_CHUNK_BYTES

    folder = _config_folder(str(model))  # resolved once: for a hub id this searches the local cache
    transformer, index, vae = meta_transformer(folder)
    pipe_class = str(index.get("_class_name"))
    cls = _pipeline_class(pipe_class)
    steps_total = int(num_inference_steps or _call_default(cls, "num_inference_steps", 28))
    factor = 2 ** (len(vae["block_out_channels"]) - 1) if vae.get("block_out_channels") else 1
    default_side = (128 if pipe_class in _FLUX else int(transformer.config.get("sample_size") or 64)) * factor
    height, width = int(height or default_side), int(width or default_side)
    seq = int(max_sequence_length or _call_default(cls, "max_sequence_length", 256))
    if type(transformer).__name__ == "UNet2DConditionModel" and _call_default(cls, "max_sequence_length", None) is None:
        seq = _tokenizer_length(folder, 77)  # CLIP prompts are padded to the tokenizer's length
    prefix = _text_prefix(folder, pipe_class)
    if prefix and (index.get("text_encoder_3") or [None])[0] is None:
        seq = prefix  # SD3 without T5: zeros of the CLIP length stand in for the T5 tokens
    text = prefix + seq
    if tokens is not None and not isinstance(tokens, (int, str)):
        tokens = list(range(len(list(tokens))))  # only the count matters here
    elif isinstance(tokens, str):
        tokens = [0]
    inputs = _meta_inputs(transformer, pipe_class, height, width, factor, text)
    dtype = dtype if dtype is not None else torch.float32
    kwargs = {
        "sites": sites,
        "attention": attention,
        "cfg": cfg,
        "tokens": tokens,
        "reduce": reduce,
        "dtype": dtype,
        "heads": heads,
    }
    if sites is None and attention is None:
        kwargs["sites"] = "blocks.*.resid_out.*"
    with torch.no_grad(), compat.native_attention(), record(transformer, **kwargs) as rec:
        transformer(**inputs, return_dict=False)
    selection = StepSelection(steps)
    recorded_steps = sum(1 for s in range(steps_total) if s in selection)
    guidance = guidance_scale if guidance_scale is not None else _call_default(cls, "guidance_scale", 1.0)
    rows = 2 if cfg == "both" and float(guidance) > 1 and pipe_class not in _FLUX else 1
    stored = np.dtype("float32") if dtype == torch.bfloat16 else np.dtype(str(dtype).replace("torch.", ""))
    per_sample: dict[str, int] = {}
    data = 0
    for name in rec.names:
        t = rec[name]  # meta [1 step, 1 row, ...]
        n_steps = 1 if rec.meta["reduce"]["mean_steps"] else recorded_steps
        per_step = int(math.prod(t.shape[2:])) * stored.itemsize * rows
        per_sample[name] = per_step * n_steps
        spc = max(1, min(batch_size, MAX_CHUNK_BYTES // max(per_step, 1)))
        data += math.ceil(samples / spc) * spc * per_sample[name]
    image = height * width * 3 if save_images else 0
    meta_bytes = ARRAY_OVERHEAD * len(per_sample) + PROMPT_OVERHEAD * samples
    return SizePlan(
        model=str(model),
        out=str(out),
        samples=samples,
        steps=steps_total,
        recorded_steps=recorded_steps,
        image_tokens=int(rec.meta.get("image_tokens") or _image_tokens(transformer, height, width, factor)),
        text_tokens=text,
        dtype=str(dtype).replace("torch.", ""),
        sites=per_sample,
        data_bytes=data,
        image_bytes=image * samples,
        meta_bytes=meta_bytes,
        free_bytes=free_bytes(out),
        batch_size=batch_size,
    )


def _text_prefix(folder: Path, pipe_class: str) -> int:
    """Text tokens in front of the T5 tokens: SD3's CLIP tokens (the CLIP tokenizer's length, 77 when published)."""
    if pipe_class not in _TEXT_PREFIX:
        return 0
    return _tokenizer_length(folder, _TEXT_PREFIX[pipe_class])


def _tokenizer_length(folder: Path, fallback: int) -> int:
    """The first tokenizer's ``model_max_length`` (what CLIP prompts are padded to), else ``fallback``."""
    path = folder / "tokenizer" / "tokenizer_config.json"
    if path.is_file():
        length = _read_json(path).get("model_max_length")
        if isinstance(length, int) and 0 < length < 10**6:
            return length
    return fallback


def _image_tokens(transformer: Any, height: int, width: int, factor: int) -> int:
    patch = int(transformer.config.get("patch_size") or 1)
    if type(transformer).__name__ == "FluxTransformer2DModel":
        patch = 2  # 2×2 latent patches are packed by the pipeline
    return (height // factor // patch) * (width // factor // patch)


#: host memory one CUDA recording holds at its end per byte it recorded: its pinned per-step copies (torch's pinned
#: allocator rounds each up to a power of two, ≈ 1.3×) and the arrays stacked from them when it is read
#: (docs/design.md, "Copies off the GPU do not stop it")
CUDA_RECORDING_HOST_BYTES_PER_BYTE = 2.3

#: host memory a ``latentlens record`` batch holds per byte it records, while it is recorded and the batch before it
#: is written (one batch ahead): on CUDA one recording's share plus the batch being written; on the CPU it is 2.1
#: (``benchmarks/bench_probing.py``, write-ahead peak 81 MB over plain for 38 MB recordings), so there it errs safe
HOST_BYTES_PER_RECORDED_BYTE = CUDA_RECORDING_HOST_BYTES_PER_BYTE + 1.0


def available_host_bytes() -> int | None:
    """The host memory available to a new allocation (``MemAvailable`` of ``/proc/meminfo``; None where unreadable)."""
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None


def free_bytes(out: str | Path) -> int:
    """Free bytes on the disk that holds (or will hold) ``out``."""
    path = Path(out).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


def refusal(plan: SizePlan, alternatives: dict[str, SizePlan]) -> DiskSpaceError:
    """The error for a plan that does not fit: biggest sites and which reductions would fit."""
    top = "; ".join(f"{n} {human(b * plan.samples)}" for n, b in plan.biggest())
    fitting = [f"{flag} ({human(p.total_bytes)})" for flag, p in alternatives.items() if p.fits]
    others = [f"{flag} ({human(p.total_bytes)})" for flag, p in alternatives.items() if not p.fits]
    hint = (
        f"These would fit: {', '.join(fitting)}."
        if fitting
        else f"No single reduction fits ({', '.join(others)}); combine them or record fewer prompts (--limit)."
    )
    return DiskSpaceError(
        f"This recording would write {human(plan.total_bytes)} to {plan.out}, but its disk has only "
        f"{human(plan.free_bytes)} free. The biggest sites: {top}. {hint} Nothing was computed."
    )


def reductions(model: str, base: dict[str, Any], plan: SizePlan) -> dict[str, SizePlan]:
    """Plans of the usual reductions of ``base`` (the :func:`plan_record` arguments): flag -> plan."""
    import torch

    out: dict[str, SizePlan] = {}
    options: list[tuple[str, dict[str, Any]]] = []
    if base.get("dtype") in (None, torch.float32):
        options.append(("--dtype float16", {"dtype": torch.float16}))
    reduce = base.get("reduce")
    listed = [reduce] if isinstance(reduce, str) else list(reduce or [])
    if "mean_img_tokens" not in listed:
        options.append(("--reduce mean_img_tokens", {"reduce": listed + ["mean_img_tokens"]}))
    if base.get("attention") is not None and not any(str(r).startswith("pool") for r in listed):
        options.append(("--reduce pool=2", {"reduce": listed + ["pool=2"]}))
    if plan.recorded_steps > 1:
        every = 4 if plan.recorded_steps >= 8 else 2
        options.append((f"--steps 0:{plan.steps}:{every}", {"steps": slice(0, plan.steps, every)}))
    for flag, change in options:
        try:
            out[flag] = plan_record(model, **{**base, **change})
        except (ConfigError, StoreError):
            continue  # e.g. pool=2 does not divide this image grid
    return out


__all__ = [
    "SizePlan",
    "plan_record",
    "pipeline_defaults",
    "config_transformer",
    "free_bytes",
    "available_host_bytes",
    "HOST_BYTES_PER_RECORDED_BYTE",
    "CUDA_RECORDING_HOST_BYTES_PER_BYTE",
    "human",
    "refusal",
    "reductions",
    "DiskSpaceError",
    "meta_transformer",
]
