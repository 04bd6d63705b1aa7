"""Record many prompts into a run folder: batched, seeded per prompt, resumable.

:func:`record_prompts` is what ``latentlens record`` runs. It batches the
prompts, gives every prompt its own generator (seed *i* → image *i* whatever
the batching), skips samples a previous run already finished, records each
batch with :func:`latentlens.record` and writes it to a
:class:`~latentlens.store.RunStore` together with the generated images.

Example::

    import latentlens
    from latentlens.runs import record_prompts
    pipe = latentlens.load_pipeline("toy")
    result = record_prompts(pipe, ["a red circle", "a blue square"], "runs/demo",
                            sites="blocks.*.resid_out.*", num_inference_steps=10)
    result.store["blocks.0.resid_out.img"][:, 9].shape   # [sample, token, channel]
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from latentlens.errors import ConfigError, LatentlensError, StoreError
from latentlens.store import MANIFEST, RunStore, config_hash
from latentlens.store_writer import BackgroundWriter
from latentlens.textfile import check_prompt

#: What ``latentlens record`` records when no ``--sites`` is given.
DEFAULT_SITES = "blocks.*.resid_out.*"


class RunInterruptedError(LatentlensError):
    """The pipeline raised in the middle of a run; finished samples are kept on disk."""


@dataclasses.dataclass
class PromptSet:
    """Prompts with one seed each and optional labels (``labels[i]`` is a dict or ``None``)."""

    prompts: list[str]
    seeds: list[int]
    labels: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


@dataclasses.dataclass
class RunResult:
    """What :func:`record_prompts` did: the run, how many samples it holds, what this call added."""

    path: Path
    store: RunStore
    samples: int
    recorded_now: list[int]
    names: list[str]
    seconds: float
    resumed_from: int
    workers: int = 0  # Ray workers (0: recorded in this process)
    retried: int = 0  # batches redone because their Ray worker died
    startup_seconds: float = 0.0  # Ray: starting the workers and building their pipelines

    def to_json(self) -> dict[str, Any]:
        """The ``latentlens record --json`` document."""
        document = {
            "run": str(self.path),
            "samples": self.samples,
            "recorded": self.names,
            "recorded_now": len(self.recorded_now),
            "seconds": round(self.seconds, 3),
            "resumed_from": self.resumed_from,
        }
        if self.workers:
            document.update(workers=self.workers, retried=self.retried, startup_seconds=round(self.startup_seconds, 3))
        return document


def prompt_set(prompts: Any, seeds: int | Sequence[int] | None = None) -> PromptSet:
    """Normalise prompts into a :class:`PromptSet`.

    ``prompts`` may be a list of strings, of ``(prompt, seed, labels)`` tuples
    (probe-spec samples), of dicts with ``"prompt"`` (plus optional ``"seed"``
    and label fields), or an object with ``.prompts()`` (a probe spec).
    ``seeds``: ``None`` → seed *i* for prompt *i*; an int *s* → *s + i*; a list → one per prompt.
    Seeds given by the prompts themselves win.
    """
    if hasattr(prompts, "prompts") and callable(prompts.prompts):
        prompts = prompts.prompts()
    if isinstance(prompts, str):
        prompts = [prompts]
    items = list(prompts)
    if not items:
        raise ConfigError("No prompts were given; pass at least one prompt.")
    if isinstance(seeds, Sequence) and len(seeds) != len(items):
        raise ConfigError(f"{len(seeds)} seeds were given for {len(items)} prompts; give one seed per prompt.")
    texts: list[str] = []
    out_seeds: list[int] = []
    labels: list[dict[str, Any]] = []
    any_labels = False
    for i, item in enumerate(items):
        default_seed = int(seeds[i]) if isinstance(seeds, Sequence) else (int(seeds) + i if seeds is not None else i)
        if isinstance(item, str):
            text, seed, label = item, default_seed, {}
        elif isinstance(item, Mapping):
            if "prompt" not in item:
                raise ConfigError(f"Prompt {i} ({dict(item)!r}) has no 'prompt' field; every entry needs one.")
            text = str(item["prompt"])
            seed = int(item["seed"]) if item.get("seed") is not None else default_seed
            label = dict(item.get("labels") or {k: v for k, v in item.items() if k not in ("prompt", "seed")})
        elif isinstance(item, tuple) and len(item) >= 1:
            text = str(item[0])
            seed = int(item[1]) if len(item) > 1 and item[1] is not None else default_seed
            label = dict(item[2]) if len(item) > 2 and item[2] else {}
        else:
            raise ConfigError(
                f"Prompt {i} is a {type(item).__name__}; give a string, a dict or a (prompt, seed, labels) tuple."
            )
        if not text.strip():
            raise ConfigError(f"Prompt {i} is empty; remove the empty line or give it a text.")
        check_prompt(text, where=f"Prompt {i}")
        any_labels = any_labels or bool(label)
        texts.append(text)
        out_seeds.append(seed)
        labels.append(label)
    return PromptSet(texts, out_seeds, labels if any_labels else None)


def default_num_inference_steps(pipe: Any) -> int | None:
    """The pipeline's own default ``num_inference_steps`` (from its ``__call__`` signature), if any."""
    try:
        parameter = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    except (TypeError, ValueError):
        return None
    if parameter is None or not isinstance(parameter.default, int):
        return None
    return parameter.default


def model_info(pipe: Any, model_id: str | None = None) -> dict[str, Any]:
    """Model identity for the manifest: id, pipeline class, transformer (denoiser) class, adapter."""
    from latentlens.adapters import split_target

    transformer = split_target(pipe)[0]  # .transformer, or .unet for UNet pipelines
    info: dict[str, Any] = {
        "id": model_id or getattr(getattr(pipe, "config", None), "_name_or_path", None) or type(pipe).__name__,
        "pipeline_class": type(pipe).__name__,
        "transformer_class": type(transformer).__name__,
    }
    config = getattr(transformer, "config", None)
    if config is not None:
        keep = (
            "num_layers",
            "num_single_layers",
            "attention_head_dim",
            "num_attention_heads",
            "joint_attention_dim",
            "sample_size",
            "patch_size",
            "in_channels",
            "dual_attention_layers",
            "qk_norm",
        )
        info["transformer_config"] = {k: _jsonable(config.get(k)) for k in keep if k in config}
    weights_dtype = str(getattr(transformer, "dtype", "torch.float32")).replace("torch.", "")
    if weights_dtype != "float32":  # float32 (the loaders' default) is left out: runs made before this resume
        info["dtype"] = weights_dtype
    try:
        from latentlens.adapters import adapter_for

        info["adapter"] = adapter_for(pipe).name
    except ImportError:  # pragma: no cover - adapters ship with the recorder
        info["adapter"] = None
    return info


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _spec(value: Any) -> Any:
    """A JSON-able description of a sites/steps/tokens argument (for the manifest and its hash)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, range):
        return {"range": [value.start, value.stop, value.step]}
    if isinstance(value, slice):
        return {"slice": [value.start, value.stop, value.step]}
    if callable(value):
        return f"callable:{getattr(value, '__qualname__', repr(value))}"
    if isinstance(value, Iterable):
        return [_spec(v) for v in value]
    return str(value)


def build_manifest(
    pipe: Any,
    items: PromptSet,
    *,
    model_id: str | None,
    generation: Mapping[str, Any],
    recording: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest of a run (see :mod:`latentlens.store` for the fields)."""
    return {
        "model": model_info(pipe, model_id),
        "prompts": list(items.prompts),
        "seeds": list(items.seeds),
        "labels": items.labels,
        "generation": {k: _jsonable(v) for k, v in generation.items()},
        "recording": {k: _spec(v) for k, v in recording.items()},
    }


def check_out_dir(out: str | Path, *, resume: bool, overwrite: bool, manifest: Mapping[str, Any] | None = None) -> None:
    """Refuse early (before a model is loaded) if ``out`` holds a run and neither flag is given.

    With the new run's ``manifest`` the message says whether the old run has the same configuration.
    """
    path = Path(out)
    if (path / MANIFEST).exists() and not (resume or overwrite):
        from latentlens.store import occupied_error, read_manifest

        old = read_manifest(path / MANIFEST)
        same = None if manifest is None else old.get("config_hash") == config_hash(manifest)
        raise occupied_error(path, old, same=same)
    if path.exists() and not path.is_dir():
        raise StoreError(f"The output path {path} is a file; give a folder path for the run.")


def pipeline_images(output: Any) -> list[Any]:
    """The images of a pipeline's output (PIL images or HxWxC arrays), ``[]`` if it made none."""
    images = getattr(output, "images", None)
    if images is None and isinstance(output, tuple) and output:
        images = output[0]
    if images is None:
        return []
    if hasattr(images, "ndim") and getattr(images, "ndim", 0) == 4:
        array = images.detach().cpu().float().numpy() if hasattr(images, "detach") else images
        if array.shape[1] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(0, 2, 3, 1)
        return list(array)
    return list(images)


@dataclasses.dataclass
class BatchRecording:
    """A finished batch as plain numpy arrays (what a Ray worker sends back): reads like a
    :class:`~latentlens.recorder.Recording` for :meth:`RunStore.add_recording`."""

    data: dict[str, Any]  # name -> [step, batch, ...] numpy
    dim_names: dict[str, tuple[str, ...]]
    timesteps: list[float]

    @classmethod
    def of(cls, rec: Any) -> BatchRecording:
        """Copy ``rec`` (tensors on any device, bfloat16 becomes float32) into numpy arrays."""
        data = {}
        for name in rec.names:
            tensor = rec[name].detach().cpu()
            data[name] = (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()
        return cls(data, {n: tuple(rec.dims(n)) for n in rec.names}, [float(t) for t in rec.timesteps])

    @property
    def names(self) -> list[str]:
        return list(self.data)

    def __getitem__(self, name: str) -> Any:
        return self.data[name]

    def dims(self, name: str) -> tuple[str, ...]:
        return self.dim_names[name]


def run_batch(
    pipe: Any,
    items: PromptSet,
    batch: Sequence[int],
    record_kwargs: Mapping[str, Any],
    call_kwargs: Mapping[str, Any],
    before_call: Any = None,
) -> tuple[Any, Any]:
    """Generate prompts ``batch`` of ``items`` (each with its own seeded generator) while recording.

    Returns ``(recording, pipeline output)``; ``before_call()`` runs once the recorder accepted
    the sites. Pipeline errors other than a :class:`LatentlensError` propagate unchanged.
    """
    import torch

    from latentlens.recorder import record

    generators = [torch.Generator().manual_seed(items.seeds[i]) for i in batch]
    with record(pipe, **record_kwargs) as rec:
        if before_call is not None:
            before_call()
        output = pipe([items.prompts[i] for i in batch], generator=generators, **call_kwargs)
    return rec, output


def batch_metadata(items: PromptSet, batch: Sequence[int], images: Sequence[bool]) -> list[dict[str, Any]]:
    """Journal entries of ``batch``: prompt, seed, labels and (where ``images[pos]``) the image path."""
    metadata = []
    for pos, i in enumerate(batch):
        meta: dict[str, Any] = {"prompt": items.prompts[i], "seed": items.seeds[i]}
        if items.labels is not None:
            meta["labels"] = items.labels[i]
        if pos < len(images) and images[pos]:
            meta["image"] = f"images/{i:04d}.png"
        metadata.append(meta)
    return metadata


def save_batch_images(store: RunStore, batch: Sequence[int], output: Any, save_images: bool) -> list[bool]:
    """Save the images of ``output`` as samples ``batch``; ``[saved?]`` per sample."""
    images = pipeline_images(output) if save_images else []
    for pos, i in enumerate(batch[: len(images)]):
        store.save_image(i, images[pos])
    return [pos < len(images) for pos in range(len(batch))]


def plan_batches(n_wanted: int, batch_size: int, done: frozenset[int] | set[int]) -> list[list[int]]:
    """Batches of the first ``n_wanted`` samples, aligned to multiples of ``batch_size``, finished ones left out.

    Aligned batches cover whole chunks (``samples_per_chunk`` divides ``batch_size``), so a resumed
    run or a parallel worker never shares a chunk with another batch.
    """
    batches: list[list[int]] = []
    for start in range(0, n_wanted, batch_size):
        todo = [i for i in range(start, min(start + batch_size, n_wanted)) if i not in done]
        if todo:
            batches.append(todo)
    return batches


def _write_batch(store: RunStore, rec: Any, batch: list[int], images: list[Any], metadata: list[dict]) -> None:
    """Images, then the recording, then the journal lines of one batch (on the writer thread)."""
    for i, image in zip(batch, images):
        store.save_image(i, image)
    store.add_recording(rec, sample_ids=batch, metadata=metadata)


def record_prompts(
    pipe: Any,
    prompts: Any,
    out: str | Path,
    *,
    sites: Any = None,
    attention: Any = None,
    steps: Any = None,
    seeds: int | Sequence[int] | None = None,
    batch_size: int = 4,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    cfg: str = "cond",
    tokens: Any = None,
    reduce: Any = None,
    dtype: Any = None,
    model_id: str | None = None,
    pipeline_kwargs: Mapping[str, Any] | None = None,
    save_images: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
    repair: bool = False,
    ray: str | None = None,
    workers: int | None = None,
    worker_pipeline: Any = None,
    write_ahead: int = 1,
) -> RunResult:
    """Record ``prompts`` through ``pipe`` into the run folder ``out``; returns a :class:`RunResult`.

    ``sites``/``attention``/``steps``/``cfg``/``tokens``/``reduce``/``dtype`` go to
    :func:`latentlens.record` (``None`` = the recorder's default). Prompt *i* is
    generated with ``torch.Generator().manual_seed(seeds[i])``, alone or in a batch
    alike. ``limit`` records only the first *N* prompts (the manifest keeps all, so
    a later ``resume=True`` run without a limit finishes them). A folder holding a
    run is refused unless ``resume`` (same configuration; finished samples are
    skipped) or ``overwrite``. If the pipeline raises, finished samples stay on disk
    and :class:`RunInterruptedError` says how to resume; a full disk raises
    :class:`~latentlens.errors.StoreError` and leaves the run readable. Each batch is
    written by a background thread while the next one is generated; at most
    ``write_ahead`` finished batches wait for the disk (``0``: write in this thread).
    A resumed run whose finished samples have damaged chunk files is refused;
    ``repair=True`` (implies ``resume``) checks every finished sample (sizes and checksums)
    and records exactly the damaged ones again.

    ``ray`` records on a Ray cluster instead (``"local"`` starts one on this machine, ``"auto"``
    or an address joins a running one; see :mod:`latentlens.distributed`) with ``workers``
    pipelines, each built from ``worker_pipeline`` (a model name for :func:`load_pipeline` or a
    zero-argument callable; default: ``model_id``, else a pickled copy of ``pipe``). The result
    is the same store as a serial run.
    """
    started = time.perf_counter()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}.")
    items = prompt_set(prompts, seeds)
    generation: dict[str, Any] = {
        "num_inference_steps": num_inference_steps or default_num_inference_steps(pipe),
        "guidance_scale": guidance_scale,
        "height": height,
        "width": width,
        **dict(pipeline_kwargs or {}),
    }
    call_kwargs = {k: v for k, v in generation.items() if v is not None}
    if sites is None and attention is None:
        sites = DEFAULT_SITES
    record_kwargs = {
        "sites": sites,
        "attention": attention,
        "steps": steps,
        "cfg": cfg,
        "tokens": tokens,
        "reduce": reduce,
        "dtype": dtype,
    }
    recording = dict(record_kwargs)
    recording["dtype"] = str(dtype) if dtype is not None else None
    manifest = build_manifest(pipe, items, model_id=model_id, generation=generation, recording=recording)
    if repair and (ray is not None or workers is not None):
        raise ConfigError("repair runs in this process; drop ray=/workers= (--ray/--workers) to repair a run.")
    resume = resume or repair
    check_out_dir(out, resume=resume, overwrite=overwrite, manifest=manifest)
    kwargs = {k: v for k, v in record_kwargs.items() if v is not None}
    n_wanted = len(items) if limit is None else min(limit, len(items))
    if ray is not None or workers is not None:
        from latentlens.distributed import record_on_ray

        return record_on_ray(
            pipe,
            items,
            out,
            manifest=manifest,
            record_kwargs=kwargs,
            call_kwargs=call_kwargs,
            batch_size=batch_size,
            n_wanted=n_wanted,
            save_images=save_images,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            ray=ray,
            workers=workers,
            worker_pipeline=worker_pipeline if worker_pipeline is not None else model_id,
            started=started,
        )

    store: RunStore | None = None
    existing = (Path(out) / MANIFEST).exists()
    if existing and (resume or overwrite):
        store = RunStore.create(
            out,
            manifest,
            resume=resume and not overwrite,
            overwrite=overwrite,
            samples_per_chunk=batch_size,
            repair=repair and not overwrite,
        )
        if repair and not overwrite:
            repaired = store.repair()
            if repaired and progress:
                print(
                    f"record: {len(repaired)} damaged samples will be recorded again: {repaired[:12]}", file=sys.stderr
                )
        elif resume and not overwrite:
            report = store.verify(checksums=False)  # sizes only: cheap, and catches truncated chunks
            if not report.ok:
                store.close()
                raise StoreError(report.message())
    resumed_from = len(store.completed) if store is not None else 0
    done = store.completed if store is not None else frozenset()
    batches = plan_batches(n_wanted, batch_size, done)

    bar = None
    if progress and batches:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(map(len, batches)), desc=f"record {Path(out).name}", unit="prompt", file=sys.stderr)
    recorded_now: list[int] = []
    writer = BackgroundWriter(write_ahead)

    def create_store() -> None:  # once the recorder accepted the sites (bad names fail first)
        nonlocal store
        if store is None:
            store = RunStore.create(out, manifest, samples_per_chunk=batch_size)

    try:
        for batch in batches:
            try:
                rec, output = run_batch(pipe, items, batch, kwargs, call_kwargs, before_call=create_store)
            except (LatentlensError, KeyboardInterrupt):
                raise
            except Exception as error:
                writer.flush()  # the batches generated before are finished samples: write them
                finished = len(store.completed) if store is not None else 0
                raise RunInterruptedError(
                    f"The pipeline raised {type(error).__name__}: {error} while recording prompts "
                    f"{batch[0]}..{batch[-1]}. The {finished} samples finished before are kept in {out}; "
                    "fix the cause and rerun with --resume (resume=True) to record the rest."
                ) from error
            assert store is not None
            images = list(pipeline_images(output))[: len(batch)] if save_images else []
            metadata = batch_metadata(items, batch, [pos < len(images) for pos in range(len(batch))])
            writer.submit(functools.partial(_write_batch, store, rec, batch, images, metadata))
            recorded_now.extend(batch)
            if bar is not None:
                bar.update(len(batch))
        writer.close()
    except BaseException:
        writer.close(raise_error=False)  # the error on its way up says more than a later writer error
        raise
    finally:
        if bar is not None:
            bar.close()
        if store is not None:
            store.close()
    if store is None:  # nothing to do: every wanted sample was finished already
        store = RunStore.create(out, manifest, resume=True)
        store.close()
    run = RunStore.open(out)
    names = run.names
    return RunResult(
        path=Path(out),
        store=run,
        samples=len(run.completed),
        recorded_now=recorded_now,
        names=names,
        seconds=time.perf_counter() - started,
        resumed_from=resumed_from,
    )


__all__ = [
    "record_prompts",
    "prompt_set",
    "PromptSet",
    "RunResult",
    "RunInterruptedError",
    "DEFAULT_SITES",
    "build_manifest",
    "check_out_dir",
    "config_hash",
    "BatchRecording",
    "run_batch",
    "plan_batches",
    "batch_metadata",
    "save_batch_images",
    "pipeline_images",
]
