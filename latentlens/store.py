"""The on-disk run store: chunked, lazy, append-only and resumable (Zarr v3).

A run folder holds::

    RUN_DIR/
      manifest.json        model, prompts, seeds, settings, timesteps, versions, config hash
      completed.jsonl      one line per finished sample (written after its data is synced to disk, fsync'ed)
      arrays/              a Zarr v3 group; one array per recorded name
        blocks.3.resid_out.img    [sample, step, token, channel]
        blocks.3.attn.img2txt     [sample, step, query, key]
      images/0000.png      the generated image of each sample (when a pipeline made one)

Arrays are sample-major and chunked ``(samples_per_chunk, 1, ...)``, so "all
samples at one (site, step)" reads ``n_samples / samples_per_chunk`` chunk
files and nothing else. The chunk files of an array lie side by side in its folder
(``c.{chunk}.{step}.0…``: no folder per chunk and step to create and fsync); stores written with
zarr's nested ``c/…`` keys read and grow in that layout. Dim names are stored as Zarr ``dimension_names``.
A sample counts as recorded only once its line is in ``completed.jsonl``; the
line is written after all of the sample's data, so a crash (even SIGKILL)
loses at most the batch in flight, and reopening never duplicates a sample.
Chunk files and the manifest are replaced atomically (temp file + rename), so
a full disk or a crash never damages data already written.

Example::

    from latentlens.store import RunStore, open_run
    store = RunStore.create("runs/colors", {"prompts": prompts, "seeds": seeds})
    with latentlens.record(pipe, sites="blocks.*.resid_out.img") as rec:
        pipe(prompts[:4])
    store.add_recording(rec, sample_ids=[0, 1, 2, 3])

    run = open_run("runs/colors")
    run["blocks.3.resid_out.img"][:, 5]   # np.ndarray [sample, token, channel] at step 5
    sorted(run.completed)                  # [0, 1, 2, 3]
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import shutil
import sys
import threading
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from latentlens.atomicfile import fsync_path, write_atomic
from latentlens.errors import StoreError
from latentlens.names import is_map

#: what an array of a run holds
ArrayKind = Literal["map", "activation"]

FORMAT = "latentlens-run/1"
MANIFEST = "manifest.json"
JOURNAL = "completed.jsonl"
ARRAYS = "arrays"
IMAGES = "images"
LOCK = ".writer.lock"
DIGEST = "crc32"  # journal field: {name: CRC-32 of the sample's little-endian C-order bytes}

#: Manifest sections that define *what* a run computes; two runs with the same
#: values here produce the same data, so one may resume the other.
HASHED_KEYS = ("model", "prompts", "seeds", "labels", "generation", "recording")

#: Upper bound of one chunk file when ``samples_per_chunk`` is chosen automatically.
MAX_CHUNK_BYTES = 64 * 2**20
# an array's chunk files lie side by side in its folder (`c.{chunk}.{step}.0.0`), not one folder per sample chunk
# and step: a 20-step recording of 15 sites then creates no folders and fsyncs 17 of them, not ~600 (stores
# written before keep their nested `c/…` keys; zarr reads either from the array's metadata)
FLAT_CHUNK_KEYS = {"name": "default", "separator": "."}

_HELD_LOCKS: set[str] = set()  # run folders this process is writing


def now_iso() -> str:
    """The current UTC time as an ISO-8601 string (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def config_hash(manifest: Mapping[str, Any]) -> str:
    """A short stable hash of the manifest sections that define the run's data (:data:`HASHED_KEYS`)."""
    payload = {key: manifest.get(key) for key in HASHED_KEYS}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def software_versions() -> dict[str, str]:
    """Versions of latentlens and of the libraries that shape recorded data."""
    from importlib import metadata

    from latentlens import __version__

    versions = {"latentlens": __version__, "python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "zarr", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:  # pragma: no cover - optional at read time
            pass
    return versions


def _is_disk_full(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _to_numpy(value: Any) -> np.ndarray:
    """A CPU numpy array from a numpy array or a torch tensor (bfloat16 becomes float32)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(value)


def _runs(ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """Split sorted-or-not ``ids`` into runs of consecutive values: (position, first_id, length)."""
    out: list[tuple[int, int, int]] = []
    start = 0
    for pos in range(1, len(ids) + 1):
        if pos == len(ids) or ids[pos] != ids[pos - 1] + 1:
            out.append((start, ids[start], pos - start))
            start = pos
    return out


def _raw_chunk_dir(array: Any, root: Path | None) -> Path | None:
    """The folder of ``array`` if its chunks are plain little-endian C-order bytes on a local disk.

    Then a whole chunk is exactly ``ndarray.tobytes()`` at ``array.metadata.encode_chunk_key(coords)``,
    which lets the store read and write whole chunks without zarr's per-chunk machinery (4-5x
    faster here). Any other layout (compression, sharding, big-endian host) returns ``None`` and
    goes through zarr.
    """
    if root is None or sys.byteorder != "little":
        return None
    from latentlens.compat import zarr_raw_chunks_ok

    if not zarr_raw_chunks_ok():  # zarr changed its chunk-key layout: use zarr's own path (a notice says so)
        return None
    meta = array.metadata
    codecs: tuple[Any, ...] = tuple(getattr(meta, "codecs", ()))
    if len(codecs) != 1 or type(codecs[0]).__name__ != "BytesCodec":
        return None
    if str(getattr(codecs[0], "endian", "little")).split(".")[-1].lower() not in ("little", "none"):
        return None
    if getattr(array, "order", "C") != "C" or np.dtype(array.dtype).kind not in "fiub":
        return None
    return root / array.path


def _crc32(sample: np.ndarray) -> int:
    """CRC-32 of one sample's data ``[step, ...]`` as little-endian C-order bytes."""
    import zlib

    data = np.ascontiguousarray(sample, dtype=sample.dtype.newbyteorder("<"))
    return zlib.crc32(memoryview(data).cast("B")) if data.size else 0  # type: ignore[arg-type]  # ndarray is a buffer


_CHECKSUM_THREADS: dict[int, ThreadPoolExecutor] = {}


def _checksum_thread() -> ThreadPoolExecutor:
    """One thread (per process: a forked child makes its own) that computes CRC-32s while the caller writes."""
    pid = os.getpid()
    if pid not in _CHECKSUM_THREADS:
        _CHECKSUM_THREADS.clear()  # an executor inherited through fork has no thread behind it
        _CHECKSUM_THREADS[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentlens-checksum")
    return _CHECKSUM_THREADS[pid]


def _write_chunk_file(path: Path, block: np.ndarray) -> None:
    """Replace one chunk file atomically (temp file + rename, as zarr's LocalStore does; not fsync'ed)."""
    write_atomic(path, memoryview(block).cast("B"), durable=False)  # type: ignore[arg-type]  # ndarray is a buffer


def fsync_paths(files: Sequence[Path], root: Path, *, uncache: Collection[Path] = ()) -> None:
    """Make ``files`` (under ``root``) durable: each file, and every folder from theirs up to ``root``.

    A new or renamed file's folder entry is durable only once that folder is fsync'ed. Many paths are
    fsync'ed from a few threads, so the file system commits them together (75 chunk files and their ~200
    folders: ~30–45 ms here, against ~0.7 s one after another under load; the order does not matter, as
    the caller journals only after all of them). The files in ``uncache`` also leave the page cache once
    they are on disk (``drop_cache`` of :func:`~latentlens.atomicfile.fsync_path`).
    """
    folders: set[Path] = set()
    for file in files:
        folder = file.parent
        while folder not in folders and (folder == root or root in folder.parents):
            folders.add(folder)
            folder = folder.parent
    jobs = [(path, path in uncache) for path in files] + [(folder, False) for folder in sorted(folders)]

    def fsync_one(job: tuple[Path, bool]) -> None:
        fsync_path(job[0], missing_ok=True, drop_cache=job[1])  # gone meanwhile: nothing to do

    if len(jobs) > 16:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="latentlens-fsync") as pool:
            list(pool.map(fsync_one, jobs))
    else:
        for job in jobs:
            fsync_one(job)


def _read_chunk(path: str, out: np.ndarray, offset: int) -> bool:
    """Fill ``out`` (C-contiguous) with the bytes of chunk file ``path`` from ``offset``; False if it is missing.

    One copy, page cache → ``out`` (no intermediate array).
    """
    try:
        with open(path, "rb", buffering=0) as handle:
            if offset:
                handle.seek(offset)
            view = memoryview(out).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer
            got = 0
            while got < len(view):
                n = handle.readinto(view[got:])
                if not n:
                    raise StoreError(
                        f"Chunk file {path} is shorter than its array's chunk shape; the run is damaged. "
                        "`latentlens verify RUN` lists the damaged samples and `latentlens record ... --resume "
                        "--repair` records them again."
                    )
                got += n
    except FileNotFoundError:
        return False
    return True


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> str:
    """The config-defining fields that differ between two manifests, with both values.

    Example: ``"generation.num_inference_steps (the run has 10, these settings 20)"``.
    """
    found: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if a == b or len(found) >= limit:
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key), b.get(key), f"{where}.{key}")
            return
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for k, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{k}]")
            return
        found.append(f"{where} (the run has {_shown(a)}, these settings {_shown(b)})")

    for key in HASHED_KEYS:
        walk(old.get(key), new.get(key), key)
    return "; ".join(found)


def occupied_error(path: Path, old: Mapping[str, Any], *, same: bool | None = None) -> StoreError:
    """The error for an ``--out`` folder that already holds a run (``same``: of these very settings)."""
    model = (old.get("model") or {}).get("id") if isinstance(old.get("model"), Mapping) else None
    what = {True: "a run of this same configuration", False: "a run of another model or configuration", None: "a run"}[
        same
    ]
    return StoreError(
        f"{path} already holds {what}"
        + (f" (model {model!r}, {len(old.get('prompts') or [])} prompts)" if model else "")
        + ". Pass --resume (resume=True) to continue it, --overwrite (overwrite=True) to replace it, "
        "or choose another --out folder."
    )


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path`` as a dict; :class:`StoreError` naming the file when it is not one."""
    try:
        text = path.read_bytes().decode("utf-8")
        manifest = json.loads(text)
    except UnicodeDecodeError as error:
        raise StoreError(
            f"The manifest {path} is not UTF-8 text (byte {error.start}); the run folder is damaged. "
            "Restore manifest.json from a copy, or record the run again into a new folder."
        ) from None
    except (OSError, ValueError) as error:
        raise StoreError(
            f"The manifest {path} cannot be read ({error}); the run folder is damaged. "
            "Restore manifest.json from a copy, or record the run again into a new folder."
        ) from None
    if not isinstance(manifest, dict):
        raise StoreError(
            f"The manifest {path} holds a JSON {type(manifest).__name__}, not an object; the run folder is damaged. "
            "Restore manifest.json from a copy, or record the run again into a new folder."
        )
    for key, kind in _MANIFEST_TYPES.items():
        value = manifest.get(key)
        if value is not None and not isinstance(value, kind):
            raise StoreError(
                f"The manifest {path} has a {type(value).__name__} as {key!r} where a JSON "
                f"{'list' if kind is list else 'object'} belongs; the run folder is damaged. Restore manifest.json "
                "from a copy, or record the run again into a new folder."
            )
    return manifest


_MANIFEST_TYPES: dict[str, type] = {
    "prompts": list,
    "seeds": list,
    "labels": list,
    "timesteps": list,
    "recorded": dict,
    "store": dict,
    "model": dict,
    "generation": dict,
    "recording": dict,
}


def read_journal(path: Path) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The entries of a completion journal and its damaged lines ``(line number, reason)``.

    A last line without its newline is a write torn by a crash: it is ignored, not damage.
    Every other line must be UTF-8 JSON with an integer ``sample``.
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn line
    entries: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
            if not isinstance(entry, dict) or isinstance(entry.get("sample"), bool):
                raise TypeError("not an object with a sample id")
            sample = int(entry["sample"])
            if sample < 0 or sample != entry["sample"]:
                raise ValueError(f"sample id {entry['sample']!r} is not a non-negative integer")
        except UnicodeDecodeError:
            bad.append((number, "not UTF-8 text"))
            continue
        except (ValueError, KeyError, TypeError) as error:
            bad.append((number, "not a journal entry" if not str(error) else f"not a journal entry: {error}"[:120]))
            continue
        entries.append(entry)
    return entries, bad


class StoredArray:
    """A lazy, read-only view of one recorded array; slicing reads only the chunks it needs.

    Example::

        arr = run["blocks.3.resid_out.img"]
        arr.dims            # ('sample', 'step', 'token', 'channel')
        arr[:, 5].shape     # (sample, token, channel): one (site, step) across samples
        arr.isel(step=5, sample=[0, 2])
    """

    def __init__(self, name: str, array: Any, root: Path | None = None) -> None:
        self.name = name
        self._array = array
        self._raw = _raw_chunk_dir(array, root)

    @property
    def dims(self) -> tuple[str, ...]:
        names = self._array.metadata.dimension_names
        return tuple(names) if names else tuple(f"dim_{i}" for i in range(self.ndim))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self._array.chunks)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def zarr(self) -> Any:
        """The underlying :class:`zarr.Array` (for advanced use)."""
        return self._array

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            fast = self._step_slice(key)
            if fast is not None:
                return fast
            if isinstance(key, tuple) and any(isinstance(k, (list, np.ndarray)) for k in key):
                return self._array.oindex[key]
            if isinstance(key, (list, np.ndarray)):
                return self._array.oindex[(key,)]
            return self._array[key]
        except (StoreError, IndexError, TypeError, KeyError, MemoryError):
            raise  # a read larger than memory is not damage: read fewer samples at a time
        except Exception as error:  # zarr's decode errors of a damaged chunk file
            raise StoreError(
                f"Reading {self.name!r} failed ({type(error).__name__}: {str(error)[:160]}); a chunk file of "
                "this array is damaged. `latentlens verify RUN` lists the damaged samples and "
                "`latentlens record ... --resume --repair` records them again."
            ) from None

    def _step_slice(self, key: Any) -> np.ndarray | None:
        """``arr[a:b, step]`` (the probing read) straight from the chunk files, or ``None`` if not that case."""
        if self._raw is None or not isinstance(key, tuple) or len(key) != 2 or self.ndim < 3:
            return None
        samples, step = key
        if not isinstance(samples, slice) or samples.step not in (None, 1) or isinstance(step, bool):
            return None
        if not isinstance(step, (int, np.integer)) or not -self.shape[1] <= step < self.shape[1]:
            return None
        step = int(step) % self.shape[1]
        start, stop, _ = samples.indices(self.shape[0])
        stop = max(start, stop)
        spc = self.chunks[0]
        inner = self.shape[2:]
        if tuple(self.chunks[1:]) != (1, *inner):
            return None
        dtype = self.dtype
        out = np.empty((stop - start, *inner), dtype=dtype)  # [sample, ...]
        meta = self._array.metadata
        fill = meta.fill_value
        tail = (0,) * len(inner)
        for chunk in range(start // spc, -(-stop // spc)):
            lo = chunk * spc
            a, b = max(lo, start), min(lo + spc, stop)
            path = str(self._raw / meta.encode_chunk_key((chunk, step) + tail))
            if not _read_chunk(path, out[a - start : b - start], (a - lo) * out[0].nbytes if len(out) else 0):
                out[a - start : b - start] = fill
        return out

    def isel(self, **indexers: Any) -> np.ndarray:
        """Select by dim name, e.g. ``isel(step=3, sample=[0, 1])``; unnamed dims are kept whole."""
        unknown = sorted(set(indexers) - set(self.dims))
        if unknown:
            raise StoreError(f"Array {self.name!r} has no dim named {unknown[0]!r}; its dims are {list(self.dims)}.")
        key = tuple(indexers.get(dim, slice(None)) for dim in self.dims)
        return self[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self._array[...]
        return data.astype(dtype) if dtype is not None else data

    def __repr__(self) -> str:
        dims = ", ".join(f"{d}={n}" for d, n in zip(self.dims, self.shape))
        return f"StoredArray({self.name!r}, [{dims}], {self.dtype})"


class VerifyReport:
    """What :meth:`RunStore.verify` found: ``damaged`` maps a sample id to the first problem seen.

    Example::

        report = open_run("runs/x").verify()
        report.ok               # True when every finished sample's data is intact
        report.damaged          # {5: "blocks.0.resid_out.img: chunk file ... has 100 of 4096 bytes"}
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damaged: dict[int, str] = {}
        self.bad_files: list[Path] = []

    @property
    def ok(self) -> bool:
        return not self.damaged

    def add(self, ids: Any, finished: Mapping[int, Any], name: str, reason: str) -> None:
        for i in ids:
            if i in finished:
                self.damaged.setdefault(int(i), f"{name}: {reason}")

    def message(self) -> str:
        """One sentence naming the damaged samples, the first problem and the fix."""
        ids = sorted(self.damaged)
        shown = ", ".join(map(str, ids[:12])) + (" ..." if len(ids) > 12 else "")
        return (
            f"{len(ids)} finished samples of {self.path} are damaged (samples {shown}; sample {ids[0]}: "
            f"{self.damaged[ids[0]]}). Rerun the recording with `latentlens record ... --resume --repair` "
            "to record exactly those samples again."
        )


class RunStore:
    """One run folder: a manifest, one lazy array per recorded name, and a completion journal.

    Create with :meth:`create`, reopen with :meth:`open` (or :func:`open_run`).
    Writing is single-writer (a lock file guards it) and append-only; reading is
    lock-free and sees exactly the samples listed in :attr:`completed`.

    Example::

        store = RunStore.create("runs/x", {"prompts": ["a", "b"], "seeds": [0, 1]})
        store.write_samples([0, 1], {"pred": np.zeros((2, 10, 16, 8), "float32")},
                            dims={"pred": ("sample", "step", "token", "channel")})
        store.mark_complete([0, 1])
        open_run("runs/x")["pred"][:, 3].shape   # (2, 16, 8)
    """

    def __init__(
        self, path: str | os.PathLike[str], *, writable: bool = False, repair: bool = False, chunks_only: bool = False
    ) -> None:
        self.path = Path(path)
        self._repair = bool(repair and writable)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise StoreError(
                f"{self.path} is not a latentlens run: it has no {MANIFEST}. "
                "Record one with `latentlens record --out PATH ...` or check the path."
            )
        self._manifest: dict[str, Any] = read_manifest(manifest_path)
        self.writable = writable or chunks_only
        #: a worker of a distributed run: writes samples into existing arrays, never creates,
        #: resizes, journals or touches the manifest, and takes no lock (the driver holds it)
        self.chunks_only = chunks_only
        self._group: Any = None
        self._arrays: dict[str, Any] = {}
        self._samples: dict[int, dict[str, Any]] = {}
        self._digests: dict[int, dict[str, int]] = {}  # sample -> name -> crc32 of data written, not yet journaled
        # files this store wrote since the last sync() (the writer thread and the caller both write)
        self._unsynced: set[Path] = set()
        self._unsynced_unknown = False  # zarr wrote chunks whose files cannot be named: sync() syncs everything
        self._unsynced_lock = threading.Lock()
        self._lock_held = False
        if writable and not chunks_only:
            self._acquire_lock()
        try:
            if writable:
                self._repair_journal()
            self._load_journal()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: str = "r", repair: bool = False) -> RunStore:
        """Open an existing run; ``mode="r"`` reads (lock-free), ``mode="a"`` appends (one writer).

        ``repair=True`` (append mode only) drops damaged journal lines instead of refusing the run.
        ``mode="chunks"`` is for the workers of a distributed run: they write samples into the arrays
        the driver created at full length (and save images) while the driver, which holds the
        writer lock, alone journals samples and updates the manifest.
        """
        if mode not in ("r", "a", "chunks"):
            raise StoreError(f"mode must be 'r' (read), 'a' (append) or 'chunks' (worker), not {mode!r}.")
        return cls(path, writable=mode == "a", repair=repair, chunks_only=mode == "chunks")

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        manifest: Mapping[str, Any],
        *,
        overwrite: bool = False,
        resume: bool = False,
        samples_per_chunk: int | None = None,
        repair: bool = False,
    ) -> RunStore:
        """Start a run at ``path`` described by ``manifest`` (or continue it with ``resume=True``).

        ``manifest`` should hold at least ``prompts`` (their count sizes the arrays);
        :data:`HASHED_KEYS` sections define the config hash. A folder that already
        holds a run is refused unless ``resume=True`` (same config hash: finished
        samples are kept and skipped) or ``overwrite=True`` (the old run is deleted).
        ``samples_per_chunk`` (default 1; :func:`latentlens.runs.record_prompts`
        passes its batch size) is the first chunk dim of every array. ``repair`` (with
        ``resume``) drops damaged journal lines instead of refusing the run.
        """
        path = Path(path)
        manifest = dict(manifest)
        if isinstance(manifest.get("model"), str):  # {"model": "name"} is shorthand for {"model": {"id": "name"}}
            manifest["model"] = {"id": manifest["model"]}
        manifest.setdefault("prompts", [])
        new_hash = config_hash(manifest)
        if path.exists() and not path.is_dir():
            raise StoreError(f"The output path {path} is a file; give a folder path for the run.")
        existing = path / MANIFEST
        if existing.exists():
            try:
                old = read_manifest(existing)
            except StoreError:
                if not overwrite:
                    raise
                old = {}
            old_hash = old.get("config_hash")
            if overwrite:
                cls._remove_run(path)
            elif resume:
                if old_hash != new_hash:
                    diff = describe_difference(old, manifest) or "its configuration hash"
                    raise StoreError(
                        f"{path} holds a run of another model or configuration (it differs in: {diff}), "
                        "so it cannot be resumed with these settings. Use the original settings with "
                        "--resume, pass --overwrite to replace it, or choose another --out folder."
                    )
                store = cls(path, writable=True, repair=repair)
                store._update_manifest({"updated": now_iso()})
                return store
            else:
                raise occupied_error(path, old, same=old_hash == new_hash)
        elif path.is_dir() and any(path.iterdir()):
            raise StoreError(
                f"{path} is not empty and is not a latentlens run; choose an empty or new folder for --out "
                "(latentlens never deletes folders it did not create)."
            )
        path.mkdir(parents=True, exist_ok=True)
        stamp = now_iso()
        manifest.setdefault("format", FORMAT)
        manifest.setdefault("versions", software_versions())
        manifest["config_hash"] = new_hash
        manifest.setdefault("created", stamp)
        manifest["updated"] = stamp
        store_info = dict(manifest.get("store") or {})
        store_info["samples_per_chunk"] = int(samples_per_chunk or store_info.get("samples_per_chunk") or 1)
        store_info.setdefault("layout", "sample-major: [sample, step, ...], chunks (samples_per_chunk, 1, ...)")
        manifest["store"] = store_info
        manifest.setdefault("recorded", {})
        try:
            write_atomic(path / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())
        except OSError as error:
            raise (cls._disk_error(path, error, 0) if _is_disk_full(error) else error) from None
        return cls(path, writable=True)

    @staticmethod
    def _remove_run(path: Path) -> None:
        known = {MANIFEST, JOURNAL, ARRAYS, IMAGES, LOCK, "zarr.json"}
        for child in path.iterdir():
            if child.name not in known and not child.name.startswith("."):
                raise StoreError(
                    f"--overwrite refused: {path} holds {child.name!r}, which latentlens did not write. "
                    "Move it away or choose another --out folder."
                )
        lock = path / LOCK
        if lock.exists():
            RunStore._check_stale_lock(lock)
        for child in path.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    # ------------------------------------------------------------------ locking

    @staticmethod
    def _check_stale_lock(lock: Path) -> None:
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = -1
        mine = pid == os.getpid() and str(lock.parent.resolve()) in _HELD_LOCKS
        if mine or (pid > 0 and pid != os.getpid() and _pid_alive(pid)):
            raise StoreError(
                f"{lock.parent} is being written by process {pid}; wait for it to finish "
                f"(or, if that process is gone, delete {lock})."
            )

    def _acquire_lock(self) -> None:
        lock = self.path / LOCK
        if lock.exists():
            self._check_stale_lock(lock)
            lock.unlink(missing_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError as error:
            raise StoreError(f"{self.path} is being written by another process; wait for it to finish.") from error
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        self._lock_held = True
        _HELD_LOCKS.add(str(self.path.resolve()))

    def close(self) -> None:
        """Release the writer lock (reading stays possible)."""
        if self._lock_held:
            with contextlib.suppress(OSError):
                (self.path / LOCK).unlink()
            _HELD_LOCKS.discard(str(self.path.resolve()))
            self._lock_held = False
        self.writable = False

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the documented way
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ journal

    def _repair_journal(self) -> None:
        """Drop a torn last line (a crash inside a journal write) so appends start on a fresh line."""
        journal = self.path / JOURNAL
        if not journal.exists():
            return
        data = journal.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            with open(journal, "r+b") as handle:
                handle.truncate(len(keep))
                handle.flush()
                os.fsync(handle.fileno())

    def _load_journal(self) -> None:
        journal = self.path / JOURNAL
        self._samples = {}
        if not journal.exists():
            return
        try:
            entries, bad = read_journal(journal)
        except OSError as error:
            raise StoreError(f"The completion journal {journal} cannot be read ({error}).") from error
        if bad and not self._repair:
            where = ", ".join(f"line {n} ({why})" for n, why in bad[:3]) + (" ..." if len(bad) > 3 else "")
            raise StoreError(
                f"The completion journal {journal} is damaged: {where}. Rerun the recording with "
                "`latentlens record ... --resume --repair` (RunStore.open(path, mode='a', repair=True)) to drop "
                "the damaged lines and record those samples again."
            )
        if bad:  # repair: keep the readable lines, rewrite the journal without the others
            write_atomic(journal, b"".join(json.dumps(e, default=str).encode() + b"\n" for e in entries))
        self._samples = {int(e["sample"]): e for e in entries}

    def refresh(self) -> None:
        """Re-read the manifest and the journal (for a reader following a run being written)."""
        self._manifest = read_manifest(self.path / MANIFEST)
        self._arrays.clear()
        self._group = None
        self._load_journal()

    # ------------------------------------------------------------------ reading

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest (model, prompts, seeds, settings, timesteps, versions, hash)."""
        return json.loads(json.dumps(self._manifest))

    @property
    def completed(self) -> frozenset[int]:
        """Ids of the samples whose data is complete on disk."""
        return frozenset(self._samples)

    @property
    def samples(self) -> dict[int, dict[str, Any]]:
        """Per finished sample: its journal entry (prompt, seed, labels, image path, time)."""
        return {i: dict(self._samples[i]) for i in sorted(self._samples)}

    @property
    def num_samples(self) -> int:
        """Planned sample count (the manifest's prompt count), or the array length if larger."""
        planned = len(self._manifest.get("prompts") or [])
        lengths = [arr.shape[0] for arr in (self._open_array(n) for n in self.names)]
        return max([planned, *lengths])

    @property
    def names(self) -> list[str]:
        """Recorded names, sorted."""
        recorded = self._manifest.get("recorded") or {}
        if recorded:
            return sorted(recorded)
        group = self._open_group(create=False)
        return sorted(group.array_keys()) if group is not None else []

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __getitem__(self, name: str) -> StoredArray:
        return self.read(name)

    def read(self, name: str) -> StoredArray:
        """A lazy view of array ``name``: ``run.read(name)[:, step]`` reads one step across samples."""
        names = self.names
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else f" It records {len(names)} names."
            from latentlens.errors import UnknownNameError

            raise UnknownNameError(f"{name!r} was not recorded in {self.path}.{hint}")
        return StoredArray(name, self._open_array(name), self.path / ARRAYS)

    def dims(self, name: str) -> tuple[str, ...]:
        """Dim names of array ``name``, e.g. ``('sample', 'step', 'token', 'channel')``."""
        return self.read(name).dims

    def kind(self, name: str) -> ArrayKind:
        """``"map"`` (an attention map) or ``"activation"``, as the recorder wrote it.

        Example: ``[n for n in run.names if run.kind(n) == "activation"]``.
        """
        self.read(name)  # an unknown name is a clear error
        entry = (self._manifest.get("recorded") or {}).get(name) or {}
        kind = entry.get("kind")
        if kind in ("map", "activation"):
            return kind  # type: ignore[no-any-return]
        return "map" if is_map(name) else "activation"  # runs written before kinds were recorded

    def recorded_steps(self, n_steps_axis: int | None = None) -> list[int]:
        """The denoising step (transformer call index) of every position of the stored step axis.

        Read from the steps the recorder resolved; runs written before that was recorded fall back to
        the manifest's ``recording.steps`` spec (a list, ``{"range": …}``, ``{"slice": …}`` or an int).
        With ``n_steps_axis`` a spec that does not give that many steps falls back to ``0..n-1``.
        Example: ``run.recorded_steps()`` → ``[0, 4, 8]`` for ``latentlens record --steps 0:10:4``.
        """
        steps = self._manifest.get("recorded_steps")
        if not (isinstance(steps, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in steps)):
            steps = _steps_from_spec((self._manifest.get("recording") or {}).get("steps"))
        if n_steps_axis is not None and (steps is None or len(steps) != n_steps_axis):
            steps = list(range(n_steps_axis))
        return list(steps or [])

    def image_path(self, sample_id: int) -> Path:
        """Where the generated image of ``sample_id`` is (or will be) saved."""
        return self.path / IMAGES / f"{sample_id:04d}.png"

    def _open_group(self, create: bool) -> Any:
        import zarr

        if self._group is not None:
            return self._group
        location = self.path / ARRAYS
        try:
            if not location.exists():
                if not create:
                    return None
                self._group = zarr.open_group(str(location), mode="a", zarr_format=3)
            else:
                self._group = zarr.open_group(str(location), mode="a" if self.writable else "r", zarr_format=3)
        except Exception as error:  # zarr raises JSON, value and file errors for damaged metadata
            raise self._metadata_error(location, error) from None
        return self._group

    def _open_array(self, name: str) -> Any:
        if name not in self._arrays:
            group = self._open_group(create=False)
            if group is None:
                raise StoreError(f"{self.path} has no arrays yet; no sample has been written.")
            try:
                self._arrays[name] = group[name]
            except Exception as error:
                raise self._metadata_error(self.path / ARRAYS / name, error) from None
        return self._arrays[name]

    @staticmethod
    def _metadata_error(folder: Path, error: BaseException) -> StoreError:
        meta = folder / "zarr.json"
        if not meta.is_file():
            problem = "is missing"
        else:
            try:
                json.loads(meta.read_bytes().decode("utf-8"))
                problem = f"is not valid Zarr v3 metadata ({type(error).__name__}: {str(error)[:160]})"
            except (UnicodeDecodeError, ValueError) as bad:
                problem = f"is not valid JSON ({str(bad)[:120]})"
        return StoreError(
            f"The array metadata {meta} {problem}; the run folder is damaged. Restore it from a copy, or "
            "record the run again with `latentlens record --overwrite`."
        )

    # ------------------------------------------------------------------ writing

    def _require_writable(self, driver: bool = False) -> None:
        if not self.writable:
            raise StoreError(f"{self.path} was opened read-only; open it with RunStore.open(path, mode='a') to write.")
        if driver and self.chunks_only:
            raise StoreError(
                f"{self.path} was opened by a worker (mode='chunks'), which writes sample data only; the "
                "journal, the manifest and new arrays are written by the driver (mode='a')."
            )

    @staticmethod
    def _disk_error(path: Path, error: BaseException, done: int) -> StoreError:
        return StoreError(
            f"The disk holding {path} is full ({error}). The {done} samples finished so far are intact and "
            "readable; free some space and rerun with --resume (resume=True) to record the rest."
        )

    def _update_manifest(self, fields: Mapping[str, Any]) -> None:
        self._manifest.update(fields)
        try:
            write_atomic(self.path / MANIFEST, json.dumps(self._manifest, indent=2, default=str).encode())
        except OSError as error:
            if _is_disk_full(error):
                raise self._disk_error(self.path, error, len(self._samples)) from error
            raise

    def update_manifest(self, **fields: Any) -> None:
        """Set top-level manifest fields (atomically); the config-defining sections cannot change."""
        self._require_writable(driver=True)
        frozen = sorted(set(fields) & set(HASHED_KEYS + ("config_hash",)))
        if frozen:
            raise StoreError(
                f"Manifest field {frozen[0]!r} defines the run's configuration and cannot change after "
                "creation; record into a new folder instead."
            )
        self._update_manifest({**fields, "updated": now_iso()})

    def _ensure_array(
        self, name: str, sample_shape: tuple[int, ...], dtype: np.dtype, dims: Sequence[str], need: int
    ) -> Any:
        recorded = self._manifest.setdefault("recorded", {})
        group = self._open_group(create=True)
        if name in self._arrays or (name in recorded and name in group):
            array = self._open_array(name)
            if tuple(array.shape[1:]) != tuple(sample_shape):
                raise StoreError(
                    f"{name!r} has per-sample shape {tuple(sample_shape)} in this batch but "
                    f"{tuple(array.shape[1:])} in {self.path}; a run must record the same steps, tokens "
                    "and reduction for every sample (record into a new folder to change them)."
                )
            if array.shape[0] < need:
                if self.chunks_only:
                    raise StoreError(
                        f"{name!r} in {self.path} holds {array.shape[0]} samples but sample {need - 1} was "
                        "given; a worker writes only into arrays the driver created at full length."
                    )
                array.resize((need, *array.shape[1:]))
                self._note_metadata(array)
            return array
        if self.chunks_only:
            raise StoreError(f"{self.path} has no array {name!r}; a worker writes only into arrays the driver created.")
        per_sample_step = (
            int(np.prod(sample_shape[1:], dtype=np.int64)) * dtype.itemsize if sample_shape else dtype.itemsize
        )
        spc = int((self._manifest.get("store") or {}).get("samples_per_chunk") or 1)
        cap = max(1, MAX_CHUNK_BYTES // max(per_sample_step, 1))
        # the largest divisor of the requested size that fits: a batch of samples_per_chunk samples
        # (aligned) then covers whole chunks only, so no chunk is shared by two batches or workers
        spc = max(d for d in range(1, max(spc, 1) + 1) if spc % d == 0 and d <= cap)
        length = max(need, len(self._manifest.get("prompts") or []))
        chunks = (spc, 1, *sample_shape[1:]) if len(sample_shape) >= 1 else (spc,)
        fill = np.nan if dtype.kind == "f" else 0
        array = group.create_array(
            name=name,
            shape=(length, *sample_shape),
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            compressors=None,
            chunk_key_encoding=FLAT_CHUNK_KEYS,
            dimension_names=tuple(dims),
            attributes={"latentlens_name": name},
            overwrite=True,
        )
        self._arrays[name] = array
        self._note_metadata(array)
        recorded[name] = {
            "dims": list(dims),
            "sample_shape": list(sample_shape),
            "dtype": dtype.name,
            "kind": "map" if is_map(name) else "activation",
        }
        self._update_manifest({"recorded": recorded, "updated": now_iso()})
        return array

    def write_samples(
        self,
        sample_ids: Sequence[int],
        arrays: Mapping[str, Any],
        dims: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Write data of samples ``sample_ids``: ``arrays[name]`` is ``[batch, step, ...]`` (batch = len(ids)).

        Does not mark the samples complete; call :meth:`mark_complete` once
        everything of theirs (images too) is written.
        """
        self._require_writable()
        ids = [int(i) for i in sample_ids]
        if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
            raise StoreError(f"Sample ids must be distinct and non-negative, got {ids}.")
        need = max(ids) + 1 if ids else 0
        done = len(self._samples)
        checksums: list[tuple[int, str, Future[int]]] = []  # computed beside the writes (zlib drops the GIL)
        try:
            for name, value in arrays.items():
                data = _to_numpy(value)  # [batch, step, ...]
                if data.shape[0] != len(ids):
                    raise StoreError(f"{name!r} holds {data.shape[0]} samples but {len(ids)} sample ids were given.")
                name_dims = list((dims or {}).get(name) or ["sample"] + [f"dim_{k}" for k in range(1, data.ndim)])
                if len(name_dims) != data.ndim:
                    raise StoreError(f"{name!r} has {data.ndim} dims but dim names {name_dims} were given.")
                array = self._ensure_array(name, tuple(data.shape[1:]), data.dtype, name_dims, need)
                if data.dtype != array.dtype:
                    data = data.astype(array.dtype)
                for pos, i in enumerate(ids):  # checked by verify(); journaled by mark_complete
                    checksums.append((i, name, _checksum_thread().submit(_crc32, data[pos])))
                for pos, first, length in _runs(ids):
                    self._write_run(array, data[pos : pos + length], first)
            for i, name, checksum in checksums:
                self._digests.setdefault(i, {})[name] = checksum.result()
        except OSError as error:
            if _is_disk_full(error):
                raise self._disk_error(self.path, error, done) from error
            raise

    def _write_run(self, array: Any, data: np.ndarray, first: int) -> None:
        """Write ``data`` ``[sample, step, ...]`` at samples ``first..first+n-1``; whole chunks go straight to disk."""
        n = data.shape[0]
        raw = _raw_chunk_dir(array, self.path / ARRAYS)
        spc = array.chunks[0]
        inner = tuple(array.shape[2:])
        end = first + n
        self._note_zarr_chunks(array, raw, first, end)
        if raw is None or data.ndim < 2 or tuple(array.chunks[1:]) != (1, *inner):
            array[first:end] = data
            return
        lo_chunk, hi_chunk = -(-first // spc), end // spc  # the chunks lying wholly inside [first, end)
        if hi_chunk <= lo_chunk:
            array[first:end] = data
            return
        meta = array.metadata
        dtype = np.dtype(array.dtype).newbyteorder("<")
        for chunk in range(lo_chunk, hi_chunk):
            part = data[chunk * spc - first : (chunk + 1) * spc - first]  # [sample, step, ...]
            for step in range(data.shape[1]):
                path = raw / meta.encode_chunk_key((chunk, step) + (0,) * len(inner))  # noted by _note_zarr_chunks
                path.parent.mkdir(parents=True, exist_ok=True)
                block = np.ascontiguousarray(part[:, step], dtype=dtype)  # [sample, ...] = one chunk [sample, 1, ...]
                _write_chunk_file(path, block)
        if first < lo_chunk * spc:  # leading partial chunk
            array[first : lo_chunk * spc] = data[: lo_chunk * spc - first]
        if hi_chunk * spc < end:  # trailing partial chunk
            array[hi_chunk * spc : end] = data[hi_chunk * spc - first :]

    def _note_written(self, *paths: Path) -> None:
        with self._unsynced_lock:
            self._unsynced.update(paths)

    def _note_zarr_chunks(self, array: Any, raw: Path | None, first: int, end: int) -> None:
        """Note the chunk files of samples ``first..end-1`` of ``array`` (every step and inner chunk) for sync()."""
        if raw is None:  # not the plain layout: the chunk files' names are zarr's business
            with self._unsynced_lock:
                self._unsynced_unknown = True
            return
        import itertools

        spc = array.chunks[0]
        grid = [range(first // spc, -(-end // spc))]
        grid += [range(-(-size // chunk)) for size, chunk in zip(array.shape[1:], array.chunks[1:])]
        meta = array.metadata
        self._note_written(*(raw / meta.encode_chunk_key(coords) for coords in itertools.product(*grid)))

    def _note_metadata(self, array: Any) -> None:
        """Note the zarr metadata that creating or resizing ``array`` rewrote, for sync()."""
        arrays = self.path / ARRAYS
        self._note_written(arrays / "zarr.json", arrays / array.path / "zarr.json")

    def sync(self) -> None:
        """Make every file this store wrote since the last ``sync()`` durable (fsync'ed, with its folders).

        :meth:`mark_complete` calls it before journaling; a worker of a distributed run calls it before the
        driver journals its batch. Only this store's own files are synced, not the whole system's (`os.sync`),
        unless zarr wrote chunks in a layout whose file names the store cannot tell (then everything is).
        Chunk files leave the page cache once durable, so reading them back soon after goes to disk.
        """
        with self._unsynced_lock:
            files, self._unsynced = sorted(self._unsynced), set()
            unknown, self._unsynced_unknown = self._unsynced_unknown, False
        if unknown and hasattr(os, "sync"):
            os.sync()
        # chunk files are written once and read much later: their pages leave the cache (a long run keeps the
        # model's weights cached, and writes reuse freed pages; taking fresh ones cost 5-8x more on a VM here)
        chunks = {file for file in files if file.name != "zarr.json" and self.path / ARRAYS in file.parents}
        fsync_paths(files, self.path, uncache=chunks)

    def mark_complete(self, sample_ids: Sequence[int], metadata: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Journal ``sample_ids`` as finished; call after all their data is written.

        The files written so far are synced to disk first (:meth:`sync`), then the journal line is written and
        fsync'ed, so after a crash or power loss a journaled sample's data is on disk.
        """
        self._require_writable(driver=True)
        ids = [int(i) for i in sample_ids]
        metadata = list(metadata) if metadata is not None else [{} for _ in ids]
        if len(metadata) != len(ids):
            raise StoreError(f"{len(metadata)} metadata entries were given for {len(ids)} samples.")
        stamp = now_iso()
        lines = []
        entries = []
        for i, meta in zip(ids, metadata):
            entry = {"sample": i, **{k: v for k, v in dict(meta).items() if k != "sample"}, "time": stamp}
            if i in self._digests:
                entry[DIGEST] = self._digests[i]
            entries.append(entry)
            lines.append(json.dumps(entry, default=str))
        try:
            # the samples' chunk files and images reach the disk before the journal says they are done
            self.sync()
            with open(self.path / JOURNAL, "a") as handle:
                handle.write("\n".join(lines) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            self._repair_journal()
            if _is_disk_full(error):
                raise self._disk_error(self.path, error, len(self._samples)) from error
            raise
        for entry in entries:
            self._samples[entry["sample"]] = entry
            self._digests.pop(entry["sample"], None)

    def next_sample_ids(self, count: int) -> list[int]:
        """``count`` fresh ids after every id written or finished so far (for recordings without ids)."""
        used = set(self._samples)
        start = max(used) + 1 if used else 0
        return list(range(start, start + count))

    def add_recording(
        self,
        rec: Any,
        sample_ids: Sequence[int] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        *,
        complete: bool = True,
    ) -> list[int]:
        """Write everything a :func:`latentlens.record` recording holds, as samples ``sample_ids``.

        ``rec[name]`` is ``[step, batch, ...]``; it is stored as ``[sample, step, ...]``.
        Without ``sample_ids`` the batch gets the next free ids. With ``complete``
        (default) the samples are journaled as finished; returns their ids.
        """
        self._require_writable()
        names = list(rec.names)
        if not names:
            raise StoreError("The recording holds no arrays; check the sites you asked for.")
        batch = None
        arrays: dict[str, np.ndarray] = {}
        dims: dict[str, list[str]] = {}
        for name in names:
            data = _to_numpy(rec[name])  # [step, batch, ...]
            if data.ndim < 2:
                raise StoreError(f"Recorded {name!r} has shape {data.shape}; expected [step, batch, ...].")
            rec_dims = (
                list(rec.dims(name))
                if hasattr(rec, "dims")
                else ["step", "batch"] + [f"dim_{k}" for k in range(2, data.ndim)]
            )
            if batch is None:
                batch = data.shape[1]
            elif data.shape[1] != batch:
                raise StoreError(f"Recorded {name!r} has batch {data.shape[1]}, others have {batch}.")
            arrays[name] = data.swapaxes(0, 1)  # [batch, step, ...] (a view; zarr copies per chunk)
            dims[name] = ["sample", rec_dims[0] if rec_dims[0] != "batch" else "step", *rec_dims[2:]]
        assert batch is not None
        ids = list(sample_ids) if sample_ids is not None else self.next_sample_ids(batch)
        if len(ids) != batch:
            raise StoreError(f"The recording holds {batch} samples but {len(ids)} sample ids were given.")
        self.write_samples(ids, arrays, dims)
        timesteps = getattr(rec, "timesteps", None)
        if timesteps is not None and self._manifest.get("timesteps") is None and not self.chunks_only:
            self._update_manifest({"timesteps": [float(t) for t in _to_numpy(timesteps).reshape(-1)]})
        steps = getattr(rec, "steps", None)
        if steps and self._manifest.get("recorded_steps") is None:
            self._update_manifest({"recorded_steps": [int(s) for s in steps]})
        if complete:
            self.mark_complete(ids, metadata)
        return ids

    def save_image(self, sample_id: int, image: Any) -> Path:
        """Save a PIL image (or an HxWxC array in [0, 1] or uint8) as ``images/{id:04d}.png``, atomically."""
        self._require_writable()
        import io

        from PIL import Image

        if not isinstance(image, Image.Image):
            array = _to_numpy(image)
            if array.dtype != np.uint8:
                array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
            image = Image.fromarray(array.squeeze())
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        target = self.image_path(sample_id)
        target.parent.mkdir(exist_ok=True)
        try:
            write_atomic(target, buffer.getvalue())  # fsync'ed; sync() makes its folder entry durable
        except OSError as error:
            if _is_disk_full(error):
                raise self._disk_error(self.path, error, len(self._samples)) from error
            raise
        self._note_written(target)
        return target

    # ------------------------------------------------------------------ verification

    def verify(self, *, checksums: bool = True) -> VerifyReport:
        """Check every finished sample's data on disk; see :class:`VerifyReport`.

        Chunk files of the wrong size (truncated, padded) damage every sample they hold;
        with ``checksums`` (default) each sample's data is also read back and compared with
        the CRC-32 journaled when it was written (a full read of the run). Samples journaled
        without a checksum (older runs) get the size check only.
        """
        report = VerifyReport(path=self.path)
        done = sorted(self._samples)
        for name in self.names:
            array = self._open_array(name)
            spc = int(array.chunks[0])
            chunks = sorted({i // spc for i in done if i < array.shape[0]})
            raw = _raw_chunk_dir(array, self.path / ARRAYS)
            bad_chunks: set[int] = set()
            if raw is not None and array.ndim >= 2 and tuple(array.chunks[1:]) == (1, *array.shape[2:]):
                expected = int(np.prod(array.chunks, dtype=np.int64)) * np.dtype(array.dtype).itemsize
                tail = (0,) * (array.ndim - 2)
                for chunk in chunks:
                    for step in range(array.shape[1]):
                        path = raw / array.metadata.encode_chunk_key((chunk, step) + tail)
                        try:
                            size = path.stat().st_size
                        except FileNotFoundError:
                            continue  # never written: reads as the fill value (the checksum tells)
                        if size != expected:
                            bad_chunks.add(chunk)
                            report.bad_files.append(path)
                            report.add(
                                range(chunk * spc, chunk * spc + spc),
                                self._samples,
                                name,
                                f"chunk file {path} has {size} of {expected} bytes",
                            )
            if not checksums:
                continue
            for chunk in chunks:
                if chunk in bad_chunks:
                    continue
                ids = [i for i in range(chunk * spc, min(chunk * spc + spc, array.shape[0])) if i in self._samples]
                wanted = [i for i in ids if name in (self._samples[i].get(DIGEST) or {})]
                if not wanted:
                    continue
                try:
                    block = array[chunk * spc : chunk * spc + spc]  # [sample, step, ...]
                except Exception as error:
                    report.add(wanted, self._samples, name, f"a chunk cannot be decoded ({type(error).__name__})")
                    continue
                for i in wanted:
                    if _crc32(block[i - chunk * spc]) != int(self._samples[i][DIGEST][name]):
                        report.add([i], self._samples, name, "its data differs from the checksum written with it")
        return report

    def repair(self) -> list[int]:
        """Forget every damaged sample (see :meth:`verify`) so that a resumed recording writes it again.

        Chunk files of the wrong size are deleted (latentlens wrote them; what they held is lost
        anyway) and the journal is rewritten without the damaged samples. Returns their ids.
        """
        self._require_writable()
        report = self.verify()
        if not report.damaged:
            return []
        for path in report.bad_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        keep = [self._samples[i] for i in sorted(self._samples) if i not in report.damaged]
        write_atomic(self.path / JOURNAL, b"".join(json.dumps(e, default=str).encode() + b"\n" for e in keep))
        self._samples = {int(e["sample"]): e for e in keep}
        return sorted(report.damaged)

    def __repr__(self) -> str:
        return (
            f"RunStore({str(self.path)!r}, {len(self._samples)}/{len(self._manifest.get('prompts') or [])} "
            f"samples, {len(self.names)} arrays)"
        )


def _steps_from_spec(spec: Any) -> list[int] | None:
    """Steps named by a ``recording.steps`` spec as written by ``record_prompts``, or None."""
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, list) and spec and all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
        return sorted(set(spec))
    if isinstance(spec, dict) and isinstance(spec.get("range"), list) and len(spec["range"]) == 3:
        return list(range(*[v for v in spec["range"] if v is not None]))
    if isinstance(spec, dict) and isinstance(spec.get("slice"), list) and len(spec["slice"]) == 3:
        start, stop, step = spec["slice"]
        if not isinstance(stop, int) or stop < 0 or (isinstance(start, int) and start < 0):
            return None  # an open or negative slice needs the step count, which a spec does not hold
        return list(range(stop))[slice(start, stop, step)]
    return None


def open_run(path: str | os.PathLike[str]) -> RunStore:
    """Open a recorded run for reading (lock-free). Example: ``open_run("runs/x")["pred"][:, 0]``."""
    return RunStore.open(path, mode="r")


__all__ = [
    "RunStore",
    "StoredArray",
    "VerifyReport",
    "open_run",
    "config_hash",
    "read_journal",
    "read_manifest",
    "FORMAT",
    "HASHED_KEYS",
]
