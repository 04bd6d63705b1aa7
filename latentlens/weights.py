"""Weights that are verified before use: checksums of a pipeline folder, NaN/inf screening of first outputs.

A pipeline folder may carry ``SHA256SUMS`` (``sha256sum`` format: ``HEX  relative/path``);
:func:`verify_checksums` checks every listed file before loading (the bundled toy
weights always carry it). :func:`screen_first_outputs` makes the first call of
every model component of a pipeline check its output for NaN/inf and name the
component, so corrupt weights never silently give a black or noise image.

Example::

    from latentlens.weights import write_checksums, verify_checksums, screen_first_outputs
    write_checksums("out/pipeline")             # after save_pretrained
    verify_checksums("out/pipeline", hint="...")   # StoreError naming the damaged file
    screen_first_outputs(pipe)                  # pipe(...) raises StoreError on a non-finite output
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from latentlens.errors import StoreError

CHECKSUMS = "SHA256SUMS"
_SKIPPED = {CHECKSUMS, "MODEL_CARD.md", "README.md"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: str | os.PathLike[str]) -> Path:
    """Write ``folder/SHA256SUMS`` over every weights and config file below ``folder``."""
    root = Path(folder)
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _SKIPPED):
        if path.name.startswith("."):
            continue
        lines.append(f"{_sha256(path)}  {path.relative_to(root).as_posix()}\n")
    target = root / CHECKSUMS
    target.write_text("".join(lines))
    return target


def verify_checksums(folder: str | os.PathLike[str], hint: str, *, required: bool = False) -> bool:
    """Check every file listed in ``folder/SHA256SUMS``; False when there is no list (and not ``required``)."""
    root = Path(folder)
    listing = root / CHECKSUMS
    if not listing.is_file():
        if required:
            raise StoreError(f"The checksum list {listing} is missing, so the weights cannot be verified. {hint}")
        return False
    for number, line in enumerate(listing.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        expected, _, name = line.partition("  ")
        path = root / name.strip()
        if len(expected) != 64 or not name.strip() or ".." in Path(name.strip()).parts:
            raise StoreError(f"{listing} line {number} is not 'SHA256  path'. {hint}")
        if not path.is_file():
            raise StoreError(f"The weights file {path} listed in {listing} is missing. {hint}")
        if _sha256(path) != expected.lower():
            raise StoreError(
                f"The file {path} does not match its checksum in {listing}: it is damaged or was replaced. {hint}"
            )
    return True


def _first_tensor(value: Any) -> Any:
    if hasattr(value, "isfinite"):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    if hasattr(value, "to_tuple"):  # diffusers/transformers output dataclasses
        return _first_tensor(value.to_tuple())
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def _screen(module: Any, name: str) -> None:
    import torch

    handle: Any = None

    def check(_module: Any, _inputs: Any, output: Any) -> None:
        tensor = _first_tensor(output)
        if tensor is None or not tensor.is_floating_point():
            return
        if not bool(torch.isfinite(tensor).all()):
            raise StoreError(
                f"The {name} of this pipeline produced NaN or infinite values on its first call: its weights "
                "are probably corrupt, or its dtype overflows (try torch_dtype=torch.float32 or bfloat16). "
                "Restore the weights from a good copy."
            )
        handle.remove()

    handle = module.register_forward_hook(check)


def screen_first_outputs(pipe: Any) -> list[str]:
    """Check the first output of each of ``pipe``'s model components for NaN/inf; returns the names screened.

    Each component's check removes itself after its first finite output, so later calls cost nothing.
    A non-finite output raises :class:`StoreError` naming the component and the likely causes.
    """
    import torch

    screened = []
    components = getattr(pipe, "components", None) or {}
    for name, module in components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        target = module
        # a VAE is used through decode(), which calls its decoder
        if hasattr(module, "decoder") and isinstance(module.decoder, torch.nn.Module):
            target = module.decoder
        _screen(target, name)
        screened.append(name)
    return screened


__all__ = ["write_checksums", "verify_checksums", "screen_first_outputs", "CHECKSUMS"]
