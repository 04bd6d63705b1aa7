"""Train a toy model (MM-DiT, PixArt or UNet) on the shapes world with rectified flow, exactly as SD3 trains.

Recipe: images scaled to [-1, 1]; ``σ`` drawn logit-normal (``σ = sigmoid(n)``, ``n ~ N(0, 1)``);
``x_t = (1 − σ)·x0 + σ·ε``; the transformer, called with ``timestep = σ·1000``, regresses the
velocity ``v = ε − x0`` (plain MSE). Every batch is freshly rendered from
``training_combinations()`` (random caption template, jittered position); the held-out
combinations are never seen. 10% of captions are dropped to the empty prompt, which makes
classifier-free guidance possible. The text encoder is frozen, so every caption's embedding is
computed once up front. AdamW with warmup and cosine decay, an EMA of the weights (the EMA is what
is exported), fp32, 2 CPU threads (or one GPU: ``device="cuda"``; data and noise are still drawn on
the CPU, so a run's data does not depend on the device).

``arch`` picks the denoiser (:mod:`latentlens.toy.architectures`): ``"mmdit"`` (the bundled ``toy``),
``"pixart"`` (``toy-pixart``) or ``"unet"`` (``toy-unet``); all three see the same data, text
states, objective and budget (steps × batch), with sizes chosen for a comparable parameter count
(:meth:`TrainConfig.for_world` applies them).

Training is seeded and resumable: a checkpoint (model, EMA, optimizer, every RNG, step) is written
to the output folder every few minutes and at the end; running the same command again continues
from it (a larger ``steps`` continues training further). The loss log is ``loss.jsonl``.

Example::

    from latentlens.toy.train import TrainConfig, train_toy
    result = train_toy(TrainConfig(steps=8000, batch_size=32, seed=0), "/tmp/toy_train")
    result["pipeline_dir"]   # '/tmp/toy_train/pipeline' (EMA weights, loadable with ToyPipeline.from_pretrained)
    train_toy(TrainConfig.for_world("v2", arch="unet", device="cuda"), "/tmp/toy_unet_train")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from collections.abc import Callable

import numpy as np
import torch

from latentlens.atomicfile import replacing, write_atomic
from latentlens.errors import ConfigError, StoreError
from latentlens.toy.architectures import architecture, build_denoiser, predict, text_mask
from latentlens.toy.text_encoder import V2_TEXT_POSITION_SCALE, add_text_positions

CHECKPOINT_NAME = "checkpoint.pt"
LOSS_LOG_NAME = "loss.jsonl"
CONFIG_NAME = "train_config.json"
PIPELINE_DIR_NAME = "pipeline"
TEXT_CACHE_NAME = "caption_embeddings.pt"

# Fields that may change between a run and its resumption (they do not change the trajectory so far).
_RESUMABLE_FIELDS = ("steps", "checkpoint_every_s", "num_threads", "log_every", "device")
TEXT_CACHE_2_NAME = "caption_embeddings_2.pt"

WorldVersion = Literal["v1", "v2"]


@dataclass
class TrainConfig:
    """Every knob of a toy training run (the defaults produced the shipped weights)."""

    steps: int = 8000
    batch_size: int = 32
    seed: int = 0
    # model: the architecture (latentlens.toy.architectures.ARCHITECTURES) and its sizes
    arch: str = "mmdit"
    patch_size: int = 4
    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    canvas: int = 32
    # arch="unet" only (num_layers, num_attention_heads and patch_size are the DiTs'; attention_head_dim is
    # the UNet's head width): channels per resolution level and resnet + attention layers per level
    unet_block_out_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = 1
    unet_attention_levels: int | None = None  # lowest levels with cross-attention blocks; None = all but the first
    # optimisation
    learning_rate: float = 5e-4
    warmup_steps: int = 300
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # data and conditioning
    caption_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    templates: tuple[int, ...] | None = None  # caption template indices; None = all
    # world v2: this fraction of each batch are two-object scenes (0 = the one-object world only)
    two_object_fraction: float = 0.0
    two_object_templates: tuple[int, ...] | None = None  # two-object template indices; None = all
    two_object_limit: int | None = None  # only the first N two-object training pairs (quick tests); None = all
    # amplitude of the token-index code added to the text states (toy.text_encoder.add_text_positions; 0 = none)
    text_position_scale: float = 0.0
    # bookkeeping
    checkpoint_every_s: float = 240.0
    num_threads: int = 2
    log_every: int = 10
    device: str = "cpu"  # where the model trains ("cpu", "cuda", "cuda:1"); resumable on another device

    def __post_init__(self) -> None:
        architecture(self.arch)
        self.unet_block_out_channels = tuple(int(c) for c in self.unet_block_out_channels)
        for name in (
            "steps", "batch_size", "num_layers", "num_attention_heads", "attention_head_dim", "unet_layers_per_block",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Training setting {name}={value!r} must be a positive integer.")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"caption_dropout={self.caption_dropout!r} must be in [0, 1).")
        if self.canvas % self.patch_size:
            raise ConfigError(f"canvas {self.canvas} is not divisible by patch_size {self.patch_size}.")
        if not 0.0 <= self.two_object_fraction <= 1.0:
            raise ConfigError(f"two_object_fraction={self.two_object_fraction!r} must be in [0, 1].")
        if self.templates is not None:
            self.templates = tuple(int(t) for t in self.templates)
        if self.two_object_templates is not None:
            self.two_object_templates = tuple(int(t) for t in self.two_object_templates)
        if self.two_object_limit is not None and (
            isinstance(self.two_object_limit, bool)
            or not isinstance(self.two_object_limit, int)
            or self.two_object_limit < 1
        ):
            raise ConfigError(f"two_object_limit={self.two_object_limit!r} must be a positive integer or None.")

    @classmethod
    def for_world(cls, world: WorldVersion, arch: str = "mmdit", **overrides: Any) -> TrainConfig:
        """The documented recipe of the toy model for shapes world ``"v1"`` or ``"v2"`` (one and two objects),
        with the planned sizes of architecture ``arch`` (``overrides`` win over both).

        Example: ``TrainConfig.for_world("v2", steps=100)``, ``TrainConfig.for_world("v2", arch="pixart")``.
        """
        if world not in WORLD_PRESETS:
            raise ConfigError(f"Unknown shapes world {world!r}; use one of: {', '.join(WORLD_PRESETS)}.")
        sizes = dict(architecture(arch).sizes)
        if arch == "mmdit":
            sizes = {}  # the MM-DiT's sizes are the world's (v1: 6 blocks, v2: 8)
        return cls(**{**WORLD_PRESETS[world], "arch": arch, **sizes, **overrides})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["templates"] = list(self.templates) if self.templates is not None else None
        data["two_object_templates"] = (
            list(self.two_object_templates) if self.two_object_templates is not None else None
        )
        data["unet_block_out_channels"] = list(self.unet_block_out_channels)
        return data

    def build_denoiser(self) -> torch.nn.Module:
        """A fresh denoiser of this config's architecture and sizes (random weights from torch's global RNG)."""
        if self.arch == "unet":
            return build_denoiser(
                "unet",
                sample_size=self.canvas,
                block_out_channels=self.unet_block_out_channels,
                layers_per_block=self.unet_layers_per_block,
                attention_head_dim=self.attention_head_dim,
                attention_levels=self.unet_attention_levels,
            )
        return build_denoiser(
            self.arch,
            sample_size=self.canvas,
            patch_size=self.patch_size,
            num_layers=self.num_layers,
            num_attention_heads=self.num_attention_heads,
            attention_head_dim=self.attention_head_dim,
        )


# Two-object caption templates that name the first (left or top) object first, the canonical one included.
FIRST_OBJECT_FIRST_TEMPLATES: tuple[int, ...] = (0, 2, 4)

# The recipe of each world's toy model (v2's sizes chosen by measured step time; see the model card).
WORLD_PRESETS: dict[str, dict[str, Any]] = {
    "v1": {},
    "v2": {
        "steps": 12000,
        "num_layers": 8,
        "two_object_fraction": 0.6,
        # two-object captions name the left/top object first (templates 0, 2, 4): with varied order, runs
        # at steps 3 000-6 000 drew each colour on the wrong object as often as on the right one
        "two_object_templates": FIRST_OBJECT_FIRST_TEMPLATES,
        "text_position_scale": V2_TEXT_POSITION_SCALE,
        "num_threads": 1,
    },
}


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak at ``config.steps``."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    ratio = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return config.learning_rate * ratio


class CaptionBank:
    """Precomputed MiniLM embeddings of every (training combination, template) caption and of ``""``."""

    def __init__(self, templates: tuple[int, ...] | None, tokenizer: Any, text_encoder: Any) -> None:
        from latentlens.shapes import TEMPLATES, make_caption, training_combinations
        from latentlens.toy.text_encoder import encode_texts

        self.combinations = training_combinations()
        self.templates = tuple(range(len(TEMPLATES))) if templates is None else templates
        for template in self.templates:
            if not 0 <= template < len(TEMPLATES):
                raise ConfigError(f"Caption template {template} does not exist (0..{len(TEMPLATES) - 1}).")
        texts = [make_caption(a, template=t).text for a in self.combinations for t in self.templates]
        tokens, pooled = encode_texts(texts + [""], tokenizer, text_encoder)
        self.tokens = tokens  # [prompt, token, channel], n_combinations * n_templates + 1 prompts
        self.pooled = pooled  # [n_combinations * n_templates + 1, 384]
        self.empty_index = len(texts)

    def index(self, combination: int, template_slot: int) -> int:
        return combination * len(self.templates) + template_slot


def _load_or_build_bank(path: Path, config: TrainConfig, tokenizer: Any, text_encoder: Any) -> CaptionBank:
    """The caption bank, read from ``path`` when it was built for the same templates (saves a minute on resume)."""
    if path.exists():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=False)
            if cached.get("templates") == config.to_dict()["templates"]:
                bank = CaptionBank.__new__(CaptionBank)
                bank.__dict__.update(cached["bank"])
                return bank
        except Exception:
            pass
    bank = CaptionBank(config.templates, tokenizer, text_encoder)
    _atomic_save({"templates": config.to_dict()["templates"], "bank": bank.__dict__}, path)
    return bank


class TwoObjectCaptionBank:
    """Precomputed MiniLM embeddings (fp16) of every (two-object training combination, template) caption.

    ``rows[c]`` are the bank rows of combination ``c``, one per template valid for its layout.
    """

    def __init__(
        self, templates: tuple[int, ...] | None, tokenizer: Any, text_encoder: Any, limit: int | None = None
    ) -> None:
        from latentlens.shapes import (
            TWO_OBJECT_TEMPLATES,
            TWO_OBJECT_TEMPLATES_FOR,
            make_two_object_caption,
            two_object_training_combinations,
        )
        from latentlens.toy.text_encoder import encode_texts

        chosen = tuple(range(len(TWO_OBJECT_TEMPLATES))) if templates is None else templates
        for template in chosen:
            if not 0 <= template < len(TWO_OBJECT_TEMPLATES):
                raise ConfigError(
                    f"Two-object caption template {template} does not exist (0..{len(TWO_OBJECT_TEMPLATES) - 1})."
                )
        self.combinations = two_object_training_combinations()[:limit]
        texts: list[str] = []
        self.rows: list[tuple[int, ...]] = []
        for pair in self.combinations:
            valid = [t for t in TWO_OBJECT_TEMPLATES_FOR[pair.layout] if t in chosen]
            if not valid:
                raise ConfigError(
                    f"None of the two-object templates {list(chosen)} describes a {pair.layout} scene; "
                    f"include one of {list(TWO_OBJECT_TEMPLATES_FOR[pair.layout])}."
                )
            self.rows.append(tuple(range(len(texts), len(texts) + len(valid))))
            texts.extend(make_two_object_caption(pair, template=t).text for t in valid)
        tokens, pooled = encode_texts(texts, tokenizer, text_encoder)
        self.tokens = tokens.half()  # [prompt, token, channel], fp16 to keep ~50k captions in memory
        self.pooled = pooled.half()  # [prompt, channel]


def _load_or_build_bank2(path: Path, config: TrainConfig, tokenizer: Any, text_encoder: Any) -> TwoObjectCaptionBank:
    templates = config.to_dict()["two_object_templates"]
    key = templates if config.two_object_limit is None else [templates, config.two_object_limit]
    if path.exists():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=False)
            if cached.get("templates") == key:
                bank = TwoObjectCaptionBank.__new__(TwoObjectCaptionBank)
                bank.__dict__.update(cached["bank"])
                return bank
        except Exception:
            pass
    bank = TwoObjectCaptionBank(config.two_object_templates, tokenizer, text_encoder, config.two_object_limit)
    _atomic_save({"templates": key, "bank": bank.__dict__}, path)
    return bank


class _Batcher:
    """Fresh random scenes every batch: combination, template, jitter and caption dropout.

    With ``two_object_fraction > 0`` each image is a two-object scene with that probability.
    """

    def __init__(
        self,
        bank: CaptionBank,
        config: TrainConfig,
        rng: np.random.Generator,
        bank2: TwoObjectCaptionBank | None = None,
    ) -> None:
        self.bank = bank
        self.bank2 = bank2
        self.config = config
        self.rng = rng

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.config.two_object_fraction > 0:
            return self._next_mixed()
        from latentlens.shapes import render

        n = self.config.batch_size
        combos = self.rng.integers(len(self.bank.combinations), size=n)
        slots = self.rng.integers(len(self.bank.templates), size=n)
        drop = self.rng.random(n) < self.config.caption_dropout
        images = np.stack(
            [render(self.bank.combinations[c], canvas=self.config.canvas, rng=self.rng).image for c in combos]
        )  # uint8 [batch, height, width, 3]
        rows = [self.bank.empty_index if d else self.bank.index(int(c), int(s)) for c, s, d in zip(combos, slots, drop)]
        x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [batch, 3, height, width] in [-1, 1]
        index = torch.as_tensor(rows)
        return x0, self.bank.tokens[index], self.bank.pooled[index]

    def _next_mixed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from latentlens.shapes import render, render_two

        assert self.bank2 is not None
        n, canvas = self.config.batch_size, self.config.canvas
        two = self.rng.random(n) < self.config.two_object_fraction
        drop = self.rng.random(n) < self.config.caption_dropout
        images, tokens, pooled = [], [], []
        for is_two, dropped in zip(two, drop):
            if is_two:
                c = int(self.rng.integers(len(self.bank2.combinations)))
                row = self.bank2.rows[c][int(self.rng.integers(len(self.bank2.rows[c])))]
                images.append(render_two(self.bank2.combinations[c], canvas=canvas, rng=self.rng).image)
                source, index = (self.bank, self.bank.empty_index) if dropped else (self.bank2, row)
            else:
                c = int(self.rng.integers(len(self.bank.combinations)))
                slot = int(self.rng.integers(len(self.bank.templates)))
                images.append(render(self.bank.combinations[c], canvas=canvas, rng=self.rng).image)
                source, index = self.bank, (self.bank.empty_index if dropped else self.bank.index(c, slot))
            tokens.append(source.tokens[index].float())
            pooled.append(source.pooled[index].float())
        x0 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [batch, 3, height, width]
        return (
            x0,
            torch.stack(tokens),
            torch.stack(pooled),
        )  # [batch, 3, height, width], [batch, token, channel], [batch, channel]


def flow_matching_loss(
    transformer: torch.nn.Module,
    x0: torch.Tensor,
    tokens: torch.Tensor,
    pooled: torch.Tensor,
    generator: torch.Generator,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    arch: str = "mmdit",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SD3's rectified-flow loss on one batch: MSE between predicted and true velocity ``ε − x0``.

    ``transformer`` is the denoiser of ``arch`` (called by :func:`latentlens.toy.architectures.predict`);
    noise and σ are drawn from the CPU ``generator`` and moved to ``x0``'s device.
    """
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)  # [batch, 3, height, width]
    sigma = torch.sigmoid(torch.randn(batch, generator=generator) * logit_std + logit_mean).to(x0.device)  # [batch]
    s = sigma.view(batch, 1, 1, 1)
    x_t = (1.0 - s) * x0 + s * noise  # [batch, 3, height, width]
    pred = predict(arch, transformer, x_t, sigma * 1000.0, tokens, pooled, mask)
    return torch.nn.functional.mse_loss(pred, noise - x0)


def _check_device(name: str) -> torch.device:
    """``name`` as a torch device, refused (with the fix) when this machine does not have it."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"Training device {name!r} is not a torch device ({error}); use 'cpu' or 'cuda'.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Training device {name!r} was asked for, but torch sees no CUDA GPU here; use --device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"Training device {name!r} is not supported; use 'cpu' or 'cuda'.")
    return device


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise StoreError(f"Training output {out_dir} is a file; give --out a folder path.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(
            f"Cannot create the training folder {out_dir}: {error.strerror}; choose another --out."
        ) from error
    if not os.access(out_dir, os.W_OK):
        raise StoreError(f"The training folder {out_dir} is not writable; choose another --out.")


def _config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    saved = {**TrainConfig().to_dict(), **saved}  # settings added later keep their defaults in old checkpoints
    keys = (set(saved) | set(current)) - set(_RESUMABLE_FIELDS)
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def _trim_loss_log(path: Path, step: int) -> None:
    """Drop the loss-log lines written after the checkpoint at ``step`` (a run killed between checkpoints).

    Those steps are trained again on resume, so keeping their old lines would log them twice.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if (logged := _logged_step(line)) is not None and logged <= step]
    if len(kept) < len(lines):
        write_atomic(path, "".join(kept).encode())


def _logged_step(line: str) -> int | None:
    """The step of one loss-log line, or None for a line cut short by a kill mid-write."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` whole or not at all: a run killed while saving keeps its previous checkpoint."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def build_pipeline_from_state(
    transformer_state: dict[str, torch.Tensor], config: TrainConfig, text: tuple[Any, Any] | None = None
):
    """The toy pipeline of ``config.arch`` whose denoiser holds ``transformer_state`` (e.g. the EMA weights)."""
    from latentlens.toy.pipeline import PIPELINE_CLASSES, build_scheduler
    from latentlens.toy.text_encoder import load_text_encoder

    denoiser = config.build_denoiser()
    denoiser.load_state_dict({k: v.detach().cpu() for k, v in transformer_state.items()})
    denoiser.eval()
    tokenizer, text_encoder = text if text is not None else load_text_encoder()
    return PIPELINE_CLASSES[config.arch](
        denoiser,
        build_scheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_position_scale=config.text_position_scale,
    )


def _saved_config(state: dict[str, Any]) -> TrainConfig:
    saved = {k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**saved)


def export_checkpoint(checkpoint: str | Path, dest: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the EMA weights of a training checkpoint as a loadable pipeline folder at ``dest``.

    Example: ``export_checkpoint("/work/toy_train/checkpoint.pt", "latentlens/toy/weights", torch.float16)``.
    """
    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=False)
    pipe = build_pipeline_from_state(state["ema"], _saved_config(state))
    pipe.denoiser.to(dtype)
    pipe.save_pretrained(dest)
    _write_training_record(Path(dest), state)
    return Path(dest)


#: what an install replaces in a weights folder (everything else there, e.g. MODEL_CARD.md, is kept)
_INSTALLED = ("model_index.json", "scheduler", "transformer", "unet", "SHA256SUMS", "training.json")


def install_checkpoint(checkpoint: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Export a checkpoint's EMA weights as the bundled weights of its architecture (``--install``).

    The folder (``ARCHITECTURES[arch].weights_dir``, e.g. ``latentlens/toy/weights-pixart``) is created, or
    its pipeline files are replaced when it already holds a toy pipeline of the same class; anything
    else there is refused, never deleted. ``SHA256SUMS`` and ``training.json`` are written with it.
    """
    import shutil

    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=False)
    config = _saved_config(state)
    arch = architecture(config.arch)
    dest = arch.weights_dir
    index = dest / "model_index.json"
    if dest.exists():
        try:
            found = json.loads(index.read_text()).get("_class_name") if index.exists() else None
        except (OSError, ValueError):
            found = "an unreadable model_index.json"
        strangers = [p.name for p in dest.iterdir() if p.name not in _INSTALLED and p.name != "MODEL_CARD.md"]
        if (found is not None and found != arch.pipeline_class) or (found is None and strangers):
            raise StoreError(
                f"{dest} holds {found or 'files latentlens did not install (' + ', '.join(sorted(strangers)) + ')'}, "
                f"not a {arch.pipeline_class}; move it away before installing the {arch.model_name} weights there."
            )
    staging = dest.with_name(dest.name + ".installing")
    if staging.exists():
        shutil.rmtree(staging)
    pipe = build_pipeline_from_state(state["ema"], config)
    pipe.denoiser.to(dtype)
    pipe.save_pretrained(staging)
    _write_training_record(staging, state)
    dest.mkdir(parents=True, exist_ok=True)
    for name in _INSTALLED:
        old = dest / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        if (staging / name).exists():
            os.replace(staging / name, old)
    staging.rmdir()
    return dest


TRAINING_RECORD_NAME = "training.json"


def _write_training_record(dest: Path, state: dict[str, Any]) -> None:
    """``training.json`` beside exported weights: the settings, the step and the time that made them."""
    record = {
        "config": state["config"],
        "step": int(state["step"]),
        "elapsed_s": round(float(state.get("elapsed_s", 0.0)), 1),
        "cpu_s": round(float(state.get("cpu_s", 0.0)), 1),
        "setup_s": round(float(state.get("setup_s", 0.0)), 1),
    }
    (dest / TRAINING_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")


def train_toy(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue training) the toy model into ``out_dir``; return a summary dict.

    If ``out_dir`` holds a checkpoint made with the same settings, training continues from it;
    ``resume=True`` additionally requires that such a checkpoint exists. The EMA weights are written
    as a pipeline folder ``out_dir/pipeline`` at the end.
    """
    from tqdm.auto import tqdm

    from latentlens.toy.text_encoder import load_text_encoder

    out = Path(out_dir)
    _check_out_dir(out)
    checkpoint_path = out / CHECKPOINT_NAME
    if resume and not checkpoint_path.exists():
        raise StoreError(
            f"--resume was given but {checkpoint_path} does not exist; run without --resume to start training."
        )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    setup_start = time.time()
    try:
        tokenizer, text_encoder = load_text_encoder()
        device = _check_device(config.device)
        torch.manual_seed(config.seed)
        transformer = config.build_denoiser().to(device)  # the denoiser of config.arch (the name is historic)
        transformer.train()
        ema = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
        optimizer = torch.optim.AdamW(
            transformer.parameters(), lr=config.learning_rate, betas=(0.9, 0.99), weight_decay=config.weight_decay
        )
        rng = np.random.default_rng(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        step = 0
        elapsed_before = 0.0
        cpu_before = 0.0
        setup_before = 0.0
        resumed_from = None
        if checkpoint_path.exists():
            try:
                state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
            except Exception as error:
                raise StoreError(
                    f"The checkpoint {checkpoint_path} cannot be read ({error}); delete it to start over."
                ) from error
            mismatch = _config_mismatch(state["config"], config.to_dict())
            if mismatch:
                raise ConfigError(
                    f"{checkpoint_path} was made with different settings ({', '.join(mismatch)}); "
                    "use the same settings to continue it, or another --out to start a new run."
                )
            transformer.load_state_dict(state["model"])
            ema = {k: v.to(device) for k, v in state["ema"].items()}
            optimizer.load_state_dict(state["optimizer"])
            rng.bit_generator.state = state["numpy_rng"]
            generator.set_state(state["torch_rng"])
            step = int(state["step"])
            elapsed_before = float(state.get("elapsed_s", 0.0))
            cpu_before = float(state.get("cpu_s", 0.0))
            setup_before = float(state.get("setup_s", 0.0))
            resumed_from = step
            _trim_loss_log(out / LOSS_LOG_NAME, step)
        (out / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")

        bank = _load_or_build_bank(out / TEXT_CACHE_NAME, config, tokenizer, text_encoder)
        bank2 = (
            _load_or_build_bank2(out / TEXT_CACHE_2_NAME, config, tokenizer, text_encoder)
            if config.two_object_fraction > 0
            else None
        )
        batcher = _Batcher(bank, config, rng, bank2)

        def save_checkpoint() -> None:
            _atomic_save(
                {
                    "model": transformer.state_dict(),
                    "ema": ema,
                    "optimizer": optimizer.state_dict(),
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": generator.get_state(),
                    "step": step,
                    "config": config.to_dict(),
                    "elapsed_s": elapsed_before + (time.time() - start),
                    "cpu_s": cpu_before + (time.process_time() - cpu_start),
                    "setup_s": setup_s,
                },
                checkpoint_path,
            )

        start = time.time()
        setup_s = setup_before + (start - setup_start)  # loading the text encoder, encoding captions
        cpu_start = time.process_time()
        last_checkpoint = start
        window_start = start
        losses: list[float] = []
        first_losses: list[float] = []
        bar = tqdm(
            total=config.steps,
            initial=min(step, config.steps),
            desc="train-toy",
            file=sys.stderr,
            disable=not progress,
            mininterval=5.0,
            dynamic_ncols=True,
        )
        with open(out / LOSS_LOG_NAME, "a") as log:
            try:
                while step < config.steps:
                    lr = learning_rate_at(step, config)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    x0, tokens, pooled = batcher.next()
                    mask = text_mask(tokens) if config.arch == "pixart" else None  # [batch, token]
                    tokens = add_text_positions(tokens, config.text_position_scale)  # [batch, token, channel]
                    if device.type != "cpu":
                        x0, tokens, pooled = x0.to(device), tokens.to(device), pooled.to(device)
                        mask = None if mask is None else mask.to(device)
                    loss = flow_matching_loss(
                        transformer, x0, tokens, pooled, generator, config.logit_mean, config.logit_std,
                        arch=config.arch, mask=mask,
                    )  # fmt: skip
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(transformer.parameters(), config.grad_clip)
                    optimizer.step()
                    step += 1
                    decay = min(config.ema_decay, (1 + step) / (10 + step))
                    with torch.no_grad():
                        for name, value in transformer.state_dict().items():
                            ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
                    value = float(loss.detach())
                    losses.append(value)
                    if len(first_losses) < 20:
                        first_losses.append(value)
                    if on_step is not None:
                        on_step(step, value)
                    if step % config.log_every == 0 or step == config.steps:
                        recent = losses[-config.log_every :]
                        mean_loss = sum(recent) / len(recent)
                        now = time.time()
                        # step_s: wall seconds per step over this window (a SIGSTOP pause shows here);
                        # cpu_s: this process's CPU seconds so far (pauses excluded), across resumes.
                        log.write(
                            json.dumps(
                                {
                                    "step": step,
                                    "loss": round(mean_loss, 6),
                                    "lr": lr,
                                    "elapsed_s": round(elapsed_before + now - start, 1),
                                    "step_s": round((now - window_start) / len(recent), 4),
                                    "cpu_s": round(cpu_before + time.process_time() - cpu_start, 1),
                                }
                            )
                            + "\n"
                        )
                        window_start = now
                        log.flush()
                        bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                    bar.update(1)
                    if time.time() - last_checkpoint >= config.checkpoint_every_s:
                        save_checkpoint()
                        last_checkpoint = time.time()
            except KeyboardInterrupt:
                save_checkpoint()
                bar.close()
                raise
        bar.close()
        save_checkpoint()
        pipeline_dir = out / PIPELINE_DIR_NAME
        pipe = build_pipeline_from_state(ema, config, (tokenizer, text_encoder))
        pipe.save_pretrained(pipeline_dir)
        elapsed = elapsed_before + (time.time() - start)
        return {
            "out": str(out),
            "arch": config.arch,
            "parameters": sum(p.numel() for p in transformer.parameters()),
            "checkpoint": str(checkpoint_path),
            "pipeline_dir": str(pipeline_dir),
            "loss_log": str(out / LOSS_LOG_NAME),
            "steps": step,
            "resumed_from": resumed_from,
            "first_loss": (sum(first_losses) / len(first_losses)) if first_losses else None,
            "last_loss": (sum(losses[-20:]) / len(losses[-20:])) if losses else None,
            "seconds_total": round(elapsed, 1),
            "seconds_this_run": round(time.time() - start, 1),
            "cpu_seconds_total": round(cpu_before + time.process_time() - cpu_start, 1),
            "setup_seconds_total": round(setup_s, 1),
        }
    finally:
        torch.set_num_threads(previous_threads)
