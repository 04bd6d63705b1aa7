"""Record on a Ray cluster: one pipeline per worker, the same run folder as a serial run.

:func:`record_on_ray` is what ``latentlens record --ray ADDRESS --workers N`` and
``record_prompts(..., ray=ADDRESS, workers=N)`` run. The work is split exactly as
in a serial run (batches aligned to ``batch_size``, each prompt with its own seed),
so the store holds the same samples and values:

* the driver (this process) holds the run's writer lock, creates every array at
  its full length from the first batch (recorded by one worker and written by
  the driver), and alone writes the completion journal and the manifest;
* every other batch is recorded by a worker, which writes its samples into the
  existing arrays (``RunStore.open(path, mode="chunks")``: never creates or
  resizes an array) and its images; a batch covers whole chunks, so no chunk is
  written by two workers;
* a worker that dies (even SIGKILL) is restarted by Ray and its unfinished
  batches are redone (at least once: a batch written twice gives the same
  bytes); a killed driver leaves a run that ``--resume`` (serial or Ray)
  finishes, because only journaled samples count as recorded.

Example::

    from latentlens.runs import record_prompts
    record_prompts(pipe, prompts, "runs/big", ray="local", workers=2, model_id="toy")

The run folder must be on storage every worker sees at the same path (a local
disk for ``--ray local``, a shared filesystem for a multi-node cluster).

Workers are plain Ray actors rather than a Ray Data pipeline: each keeps one
pipeline loaded for the whole run, the driver decides which batch is redone
after a death (and counts it in ``RunResult.retried``), and no CPU has to be
left free for Ray Data's read tasks.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import secrets
import socket
import sys
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latentlens.errors import ConfigError, LatentlensError, StoreError
from latentlens.runs import (
    BatchRecording,
    PromptSet,
    RunInterruptedError,
    RunResult,
    batch_metadata,
    pipeline_images,
    plan_batches,
    run_batch,
    save_batch_images,
)
from latentlens.store import RunStore

#: Name prefix of the Ray actors that record (``ray.util.list_named_actors()`` shows them).
ACTOR_PREFIX = "latentlens-record"
#: Batches queued on one worker at a time (one running, one waiting: no idle gap between them).
QUEUE_DEPTH = 2
#: How often Ray restarts a worker whose process died before the run gives up.
MAX_RESTARTS = 3

_EXTRA_HINT = "Install it with `pip install 'latentlens[ray]'`."


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` naming the extra that provides it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"Recording on a cluster (--ray) needs Ray, which is not installed. {_EXTRA_HINT}") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (instead of Ray's long retry loop) when nothing listens at ``host:port``."""
    bare = address.split("://", 1)[-1]
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"--ray {address!r} is not a cluster address; give 'local', 'auto' or HOST:PORT as printed by "
            "`ray start --head` (e.g. 10.0.0.5:6379)."
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise ConfigError(
            f"The Ray cluster at {address} is unreachable ({error}). Check the address `ray start --head` "
            "printed and that this machine can reach it, or use --ray local for a cluster on this machine."
        ) from None


def connect(address: str = "local", *, num_cpus: int | None = None, object_store_memory: int | None = None) -> bool:
    """Connect this process to Ray; returns ``True`` if it started a new local cluster.

    ``"local"`` starts a cluster on this machine (``num_cpus``/``object_store_memory`` size it),
    ``"auto"`` joins the cluster ``ray start --head`` started on this machine, ``HOST:PORT`` (or
    ``ray://HOST:PORT``) joins that one. A process already connected keeps its connection.
    Usage statistics are off unless ``RAY_USAGE_STATS_ENABLED`` says otherwise.

    Example: ``connect("local", num_cpus=2)``.
    """
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(f"--ray {address!r} is not valid; give 'local', 'auto' or HOST:PORT.")
    ray = import_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if address == "local":
        ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, **quiet)
        return True
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError) as error:
        where = "on this machine" if address == "auto" else f"at {address}"
        raise ConfigError(
            f"No Ray cluster could be joined {where} ({error}). Start one with `ray start --head` and pass "
            "its address, or use --ray local."
        ) from None
    return False


class RecordWorker:
    """One pipeline in one Ray worker process (created through :func:`record_on_ray`)."""

    def __init__(self, source: tuple[str, Any], device: str | None, threads: int) -> None:
        self._source = source
        self._device = device
        self._threads = threads
        self._pipe: Any = None
        self._stores: dict[str, RunStore] = {}

    def pid(self) -> int:
        return os.getpid()

    def _pipeline(self) -> Any:
        if self._pipe is None:
            import torch

            torch.set_num_threads(self._threads)
            kind, value = self._source
            if kind == "name":
                from latentlens.models import load_pipeline

                pipe = load_pipeline(value, device=self._device)
            else:
                pipe = value() if kind == "factory" else value
                if self._device is not None and hasattr(pipe, "to"):
                    pipe = pipe.to(self._device)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
        return self._pipe

    def load(self) -> dict[str, Any]:
        """Build the pipeline now (not at the first batch); where it runs."""
        self._pipeline()
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": self._device or "cpu"}

    def check_path(self, probe: str, token: str) -> None:
        """Raise if this worker does not see the file ``probe`` holding ``token`` (the driver wrote it)."""
        try:
            seen = Path(probe).read_text()
        except OSError:
            seen = None
        if seen != token:
            raise StoreError(
                f"The Ray worker on {socket.gethostname()} cannot see {Path(probe).parent} as the driver does. "
                "Put the run folder (--out) on storage that every node mounts at the same path (a shared "
                "filesystem), or use --ray local."
            )

    def record(
        self,
        out: str,
        batch: list[int],
        prompts: list[str],
        seeds: list[int],
        record_kwargs: dict[str, Any],
        call_kwargs: dict[str, Any],
        save_images: bool,
        write: bool,
    ) -> Any:
        """Record samples ``batch``; write them into ``out`` (``write``) or send them back."""
        local = PromptSet(prompts, seeds)
        rec, output = run_batch(self._pipeline(), local, range(len(batch)), record_kwargs, call_kwargs)
        if not write:
            images = pipeline_images(output) if save_images else []
            return BatchRecording.of(rec), [_plain_image(im) for im in images]
        store = self._stores.get(out)
        if store is None:
            store = self._stores[out] = RunStore.open(out, mode="chunks")
        saved = save_batch_images(store, batch, output, save_images)
        store.add_recording(rec, sample_ids=batch, complete=False)
        store.sync()  # this node's writes reach the disk before the driver journals the batch
        return saved


def _plain_image(image: Any) -> Any:
    """A PIL image or numpy array (picklable without torch) from what a pipeline returned."""
    if hasattr(image, "detach"):
        return image.detach().cpu().float().numpy()
    return image


def _pipeline_source(pipe: Any, worker_pipeline: Any, ray: Any) -> tuple[str, Any]:
    if isinstance(worker_pipeline, (str, os.PathLike)):
        return "name", str(worker_pipeline)
    if worker_pipeline is not None:
        if not callable(worker_pipeline):
            raise ConfigError(
                f"worker_pipeline must be a model name or a zero-argument callable, not {type(worker_pipeline).__name__}."
            )
        return "factory", worker_pipeline
    return "object", ray.put(pipe)


def _task_error(ray: Any, error: BaseException) -> BaseException | None:
    """The user-level exception a Ray task raised (its cause), or ``None`` if Ray itself failed."""
    if isinstance(error, ray.exceptions.RayTaskError):
        return getattr(error, "cause", None) or error
    return None


def _probe_file(out: Path) -> Path:
    """Where the driver leaves a token for the workers to read: in the nearest existing folder of ``out``."""
    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder / f".latentlens-reach-{secrets.token_hex(6)}"


def record_on_ray(
    pipe: Any,
    items: PromptSet,
    out: str | Path,
    *,
    manifest: dict[str, Any],
    record_kwargs: Mapping[str, Any],
    call_kwargs: Mapping[str, Any],
    batch_size: int,
    n_wanted: int,
    save_images: bool,
    resume: bool,
    overwrite: bool,
    progress: bool,
    ray: str | None,
    workers: int | None,
    worker_pipeline: Any,
    started: float,
) -> RunResult:
    """The Ray path of :func:`latentlens.runs.record_prompts` (which validates and builds the manifest)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers must be a positive integer, got {workers!r}.")
    address = "local" if ray is None else ray
    ray_mod = import_ray()
    started_cluster = connect(address)
    actors: list[Any] = []
    store: RunStore | None = None
    probe: Path | None = None
    try:
        resources = ray_mod.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        n_workers = workers or gpus or max(cpus, 1)
        if gpus and n_workers > gpus:
            raise ConfigError(
                f"--workers {n_workers} asks for one GPU each but the Ray cluster has {gpus} GPUs; use "
                f"--workers {gpus} or add nodes."
            )
        if not gpus and n_workers > cpus:
            raise ConfigError(
                f"--workers {n_workers} asks for one CPU each but the Ray cluster has {cpus} CPUs; use "
                f"--workers {cpus} or add nodes."
            )
        out_path = Path(out).absolute()
        source = _pipeline_source(pipe, worker_pipeline, ray_mod)
        device = "cuda" if gpus else None
        remote = ray_mod.remote(RecordWorker)
        tag = secrets.token_hex(4)
        for k in range(n_workers):
            options: dict[str, Any] = {
                "num_cpus": 1,
                "num_gpus": 1 if gpus else 0,
                "max_restarts": MAX_RESTARTS,
                "max_task_retries": 0,
                "name": f"{ACTOR_PREFIX}-{tag}-{k}",
            }
            actors.append(remote.options(**options).remote(source, device, 1))

        # 1. every worker sees the run folder where the driver does (nothing is written yet)
        probe = _probe_file(out_path)
        token = secrets.token_hex(16)
        probe.write_text(token)
        _gather(ray_mod, [a.check_path.remote(str(probe), token) for a in actors], "could not start")
        probe.unlink()
        probe = None
        # 2. every worker builds its pipeline (an error names the worker; nothing is written)
        _gather(ray_mod, [a.load.remote() for a in actors], "could not build its pipeline")
        startup = time.perf_counter() - started

        existing = (out_path / "manifest.json").exists()
        if existing and (resume or overwrite):
            store = RunStore.create(
                out, manifest, resume=resume and not overwrite, overwrite=overwrite, samples_per_chunk=batch_size
            )
        resumed_from = len(store.completed) if store is not None else 0
        batches = collections.deque(plan_batches(n_wanted, batch_size, store.completed if store else frozenset()))
        bar = None
        if progress and batches:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=sum(map(len, batches)),
                desc=f"record {out_path.name} ({n_workers} workers)",
                unit="prompt",
                file=sys.stderr,
            )
        recorded_now: list[int] = []
        retried = 0

        def task(actor: Any, batch: list[int], write: bool) -> Any:
            return actor.record.remote(
                str(out_path),
                batch,
                [items.prompts[i] for i in batch],
                [items.seeds[i] for i in batch],
                dict(record_kwargs),
                dict(call_kwargs),
                save_images,
                write,
            )

        def finished(batch: list[int], saved: Sequence[bool]) -> None:
            assert store is not None
            store.mark_complete(batch, batch_metadata(items, batch, saved))
            recorded_now.extend(batch)
            if bar is not None:
                bar.update(len(batch))

        try:
            # 3. the first batch, written by the driver, creates every array at its full length
            if batches and (store is None or not store.names):
                batch = batches[0]
                while True:
                    try:
                        rec, images = ray_mod.get(task(actors[0], batch, write=False))
                        break
                    except Exception as error:
                        retried += _raise_unless_worker_died(ray_mod, error, batch, store, out, retried)
                batches.popleft()
                if store is None:
                    store = RunStore.create(out, manifest, samples_per_chunk=batch_size)
                saved = save_batch_images(store, batch, types.SimpleNamespace(images=images), save_images)
                store.add_recording(rec, sample_ids=batch, complete=False)
                finished(batch, saved)
            # 4. the rest, QUEUE_DEPTH batches queued per worker; the driver journals each one done
            in_flight: dict[Any, tuple[int, list[int]]] = {}
            load = [0] * n_workers
            while batches or in_flight:
                for k in range(n_workers):
                    while batches and load[k] < QUEUE_DEPTH:
                        batch = batches.popleft()
                        in_flight[task(actors[k], batch, write=True)] = (k, batch)
                        load[k] += 1
                ready, _ = ray_mod.wait(list(in_flight), num_returns=1)
                k, batch = in_flight.pop(ready[0])
                load[k] -= 1
                try:
                    saved = ray_mod.get(ready[0])
                except Exception as error:
                    retried += _raise_unless_worker_died(ray_mod, error, batch, store, out, retried)
                    batches.appendleft(batch)
                    continue
                finished(batch, saved)
        finally:
            if bar is not None:
                bar.close()
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                probe.unlink()
        if store is not None:
            store.close()
        for actor in actors:
            with contextlib.suppress(Exception):
                ray_mod.kill(actor)
        if started_cluster:
            ray_mod.shutdown()
    if store is None:  # nothing to do: every wanted sample was finished already
        store = RunStore.create(out, manifest, resume=True)
        store.close()
    run = RunStore.open(out)
    return RunResult(
        path=Path(out),
        store=run,
        samples=len(run.completed),
        recorded_now=recorded_now,
        names=run.names,
        seconds=time.perf_counter() - started,
        resumed_from=resumed_from,
        workers=n_workers,
        retried=retried,
        startup_seconds=startup,
    )


def _gather(ray: Any, refs: list[Any], what: str) -> list[Any]:
    """``ray.get`` every ref in turn; the first failure raises naming its worker."""
    results = []
    for k, ref in enumerate(refs):
        try:
            results.append(ray.get(ref))
        except Exception as error:
            cause = _task_error(ray, error)
            if isinstance(cause, LatentlensError):
                raise type(cause)(f"Ray worker {k}: {cause}") from None
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(error).strip().splitlines()[0]
            raise RunInterruptedError(f"Ray worker {k} {what} ({detail}). Nothing was written.") from None
    return results


def _raise_unless_worker_died(
    ray: Any, error: BaseException, batch: list[int], store: RunStore | None, out: Any, retried: int
) -> int:
    """1 if ``error`` means the worker process died (redo the batch); else raise the run's error."""
    limit = MAX_RESTARTS * 2
    if isinstance(error, ray.exceptions.RayActorError) and retried < limit:
        return 1
    finished = len(store.completed) if store is not None else 0
    cause = _task_error(ray, error)
    if isinstance(cause, LatentlensError):
        raise cause
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else f"a worker died {retried + 1} times ({error})"
    raise RunInterruptedError(
        f"Recording prompts {batch[0]}..{batch[-1]} failed: {detail}. The {finished} samples finished before "
        f"are kept in {out}; fix the cause and rerun with --resume (resume=True) to record the rest."
    ) from None


__all__ = ["record_on_ray", "connect", "import_ray", "RecordWorker", "ACTOR_PREFIX"]
