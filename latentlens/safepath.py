"""Root confinement: a path read on a user's behalf must resolve (symlinks followed) inside its root.

Run folders are shared, copied and unpacked from archives; a symlink inside a
run's ``images/`` or ``analysis/`` folder must never make latentlens (or the
dashboard serving it) read a file elsewhere on the machine.

Example::

    from latentlens.safepath import confined, is_inside
    confined("runs/x/images/0000.png", "runs/x")   # the resolved path, or StoreError
    is_inside("/etc/passwd", "runs/x")              # False
"""

from __future__ import annotations

import os
from pathlib import Path

from latentlens.errors import StoreError


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path``, with every symlink resolved, is ``root`` or lies below it."""
    try:
        real = Path(path).resolve(strict=False)
        base = Path(root).resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop resolves to nothing
        return False
    return real == base or base in real.parents


def confined(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """The resolved ``path``; :class:`StoreError` if it (or a symlink on its way) leads outside ``root``."""
    if not is_inside(path, root):
        raise StoreError(
            f"{path} resolves outside {root} (a symlink points elsewhere); latentlens reads only files "
            f"inside the run folder. Replace the link with the file itself."
        )
    return Path(path).resolve(strict=False)


__all__ = ["confined", "is_inside"]
