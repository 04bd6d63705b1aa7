"""Replace an analysis folder's own files, and nothing else: user notes and hand-saved directions stay.

``latentlens analyze`` writes its new analysis into a folder beside ``RUN/analysis/``
and then swaps it in file by file (each file with one atomic ``os.replace``).
Files it wrote last time and does not write again are removed; every file it did
not write is left alone. What it wrote is listed in ``analysis/.latentlens-files.json``;
an analysis written before that list existed is recognised by its layout
(``summary.json`` names its directions, ``pca.json`` its embedding cells).

Example::

    from latentlens.analysis.ownfiles import swap_in, owned_files
    swap_in(Path("runs/x/.analysis.new"), Path("runs/x/analysis"))
    owned_files(Path("runs/x/analysis"))   # {'probes.json', 'directions/color/red.json', ...}
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from latentlens.atomicfile import write_atomic

INDEX = ".latentlens-files.json"
_TOP_LEVEL = ("probes.json", "pca.json", "cosine.json", "summary.json")


def _cell_stem(site: str, step: int) -> str:
    return f"{site}@{int(step)}"


def _legacy_owned(folder: Path) -> set[str]:
    """The files an analysis written without an index holds, recognised by its layout."""
    owned = {name for name in _TOP_LEVEL if (folder / name).is_file()}
    try:
        summary = json.loads((folder / "summary.json").read_text())
        directions = [str(d) for d in summary.get("directions") or []]
    except (OSError, ValueError, AttributeError):
        directions = []
    for name in directions:
        for suffix in (".json", ".safetensors"):
            owned.add(f"directions/{name}{suffix}")
    try:
        cells = [(str(c["site"]), int(c["step"])) for c in json.loads((folder / "pca.json").read_text())]
    except (OSError, ValueError, TypeError, KeyError):
        cells = []
    for site, step in cells:
        for suffix in (".npz", ".json"):
            owned.add(f"embeddings/{_cell_stem(site, step)}{suffix}")
    return {name for name in owned if (folder / name).is_file()}


def owned_files(folder: Path) -> set[str]:
    """Relative paths (POSIX) of the files latentlens wrote into the analysis ``folder``."""
    try:
        listed = json.loads((folder / INDEX).read_text())["files"]
        return {str(name) for name in listed if _is_relative_name(str(name))}
    except (OSError, ValueError, KeyError, TypeError):
        return _legacy_owned(folder) if folder.is_dir() else set()


def _is_relative_name(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def files_below(folder: Path) -> set[str]:
    """Every regular file below ``folder``, as POSIX paths relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def swap_in(new: Path, out: Path) -> set[str]:
    """Move every file of ``new`` into ``out`` and remove ``out``'s previous own files that ``new`` lacks.

    Files in ``out`` that latentlens did not write are kept. Returns the files now owned.
    ``new`` is removed at the end (it holds only latentlens' own, now empty, folders).
    """
    before = owned_files(out)
    incoming = files_below(new) - {INDEX}
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(incoming):
        target = out / name
        if target.is_symlink():  # never write through a link planted in the analysis folder
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new / name, target)
    for name in sorted(before - incoming):
        path = out / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
        _prune_empty(path.parent, out)
    data = json.dumps({"files": sorted(incoming)}, indent=1).encode()
    write_atomic(out / INDEX, data)
    shutil.rmtree(new, ignore_errors=True)
    return incoming


def _prune_empty(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only empty folders go
        folder = folder.parent


def has_probes(folder: Path) -> bool:
    """Whether the analysis in ``folder`` holds probe results (a non-empty analysis)."""
    try:
        payload = json.loads((folder / "probes.json").read_text())
    except (OSError, ValueError):
        return False
    records = payload.get("records") if isinstance(payload, dict) else payload
    return bool(records)


__all__ = ["swap_in", "owned_files", "files_below", "has_probes", "INDEX"]
