"""Limits the server enforces itself: whatever the browser sends, bounds hold.

The page's controls carry ``min``/``max``, but any client can post a callback
directly; every number a callback reads goes through :func:`bounded_int` /
:func:`bounded_float`, every text through :func:`bounded_text`, every pick from a list through
:func:`bounded_choice`, every plot event through :func:`plot_points`, and long jobs take
a slot from :class:`JobSlots` (a fixed number of lock files: a cap across the
background-job processes, released by the OS even when a job process dies).

Example::

    steps = bounded_int(value, "steps", 1, 100)   # DashboardError outside 1..100
    site = bounded_choice(value, "site", sites)   # DashboardError unless one of sites
    with JobSlots(folder, 2).take() as slot:      # None when every slot is busy
        ...
    JobSlots(folder, 2).free()                    # 0 while both are taken
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dashboards.data import DashboardError

#: Bounds of the editor's inputs (the page's controls use the same numbers).
EDIT_STEPS = (1, 100)
EDIT_ALPHA = (-8.0, 8.0)
TEXT_CHARS = 500
MAX_EDIT_JOBS = 2  # edits running at once; further requests get a "busy" answer


def bounded_int(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an int in ``low..high``; DashboardError naming the bounds otherwise."""
    if isinstance(value, bool) or value is None:
        raise DashboardError(f"{name} must be a whole number between {low} and {high}, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DashboardError(
            f"{name} must be a whole number between {low} and {high}, not {str(value)[:40]!r}."
        ) from None
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise DashboardError(f"{name} must be a whole number between {low} and {high}, not {str(value)[:40]}.")
    return int(number)


def bounded_float(value: Any, name: str, low: float, high: float) -> float:
    """``value`` as a finite float in ``[low, high]``; DashboardError naming the bounds otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DashboardError(
            f"{name} must be a number between {low:g} and {high:g}, not {str(value)[:40]!r}."
        ) from None
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high:
        raise DashboardError(f"{name} must be a number between {low:g} and {high:g}, not {str(value)[:40]}.")
    return number


def bounded_text(value: Any, name: str, limit: int = TEXT_CHARS) -> str | None:
    """``value`` as a string of at most ``limit`` characters without control characters (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DashboardError(f"{name} must be text, not a {type(value).__name__}.")
    if len(value) > limit:
        raise DashboardError(f"{name} has {len(value):,} characters; at most {limit:,} are accepted.")
    if any(ord(ch) < 32 and ch not in "\t\n" for ch in value):
        raise DashboardError(f"{name} contains control characters; type plain text.")
    return value


IMAGE_ID = re.compile(r"^[0-9a-f]{16,64}$")  # uploads and edit results are named by hex ids only


def shown(value: Any, limit: int = 60) -> str:
    """``value`` for a message: its repr, cut to ``limit`` characters (a posted value can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (strings or whole numbers); DashboardError naming some otherwise."""
    choices = list(choices)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and value in choices:
        return value
    listed = ", ".join(str(c) for c in choices[:12]) + (f" … ({len(choices)} in all)" if len(choices) > 12 else "")
    raise DashboardError(
        f"{name} {shown(value)} is not one of {listed or 'nothing (there is nothing to choose yet)'}; "
        "pick one from the page's list."
    )


def plot_points(event: Any, name: str = "The plot event") -> list[dict[str, Any]]:
    """The ``points`` of a plotly click, hover or selection event (``[]`` for none); DashboardError when the
    posted event is not one."""
    if event is None:
        return []
    points = event.get("points") if isinstance(event, dict) else None
    if points is None and isinstance(event, dict) and not event:
        return []
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise DashboardError(f"{name} {shown(event)} is not a plotly event with a list of points.")
    return points


def image_id(value: Any) -> str | None:
    """``value`` if it is a well-formed upload/result image id, else None."""
    return value if isinstance(value, str) and IMAGE_ID.match(value) else None


#: what the app state (``ids.STATE``) may hold: identifiers only, each of one type
STATE_KEYS: dict[str, type] = {
    "run": str,
    "attribute": str,
    "stream": str,
    "site": str,
    "direction": str,
    "step": int,
    "sample": int,
}


def clean_state(state: Any) -> dict[str, Any]:
    """The app state's known keys whose values have their type and a bounded size (the rest dropped):
    what a callback writes back into the state, whatever the client sent."""
    if not isinstance(state, dict):
        return {}
    out: dict[str, Any] = {}
    for key, kind in STATE_KEYS.items():
        value = state.get(key)
        if kind is str and isinstance(value, str) and len(value) <= TEXT_CHARS:
            out[key] = value
        elif kind is int and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**9:
            out[key] = value
    return out


class JobSlots:
    """At most ``count`` concurrent jobs across processes, one lock file per slot."""

    def __init__(self, folder: str | os.PathLike[str], count: int = MAX_EDIT_JOBS) -> None:
        self.folder = Path(folder)
        self.count = int(count)

    @contextlib.contextmanager
    def take(self) -> Iterator[int | None]:
        """Yield a free slot number (held until the block ends), or ``None`` when all are busy."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        for slot in range(self.count):
            fd = os.open(self.folder / f"slot-{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            try:
                yield slot
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        yield None

    def free(self) -> int:
        """How many slots are free now (taken and released at once; a hint, not a reservation)."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        free = 0
        for slot in range(self.count):
            fd = os.open(self.folder / f"slot-{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                free += 1
            finally:
                os.close(fd)
        return free


__all__ = [
    "bounded_int",
    "bounded_float",
    "bounded_text",
    "bounded_choice",
    "plot_points",
    "image_id",
    "shown",
    "clean_state",
    "STATE_KEYS",
    "IMAGE_ID",
    "JobSlots",
    "EDIT_STEPS",
    "EDIT_ALPHA",
    "MAX_EDIT_JOBS",
]
