"""Process-wide settings of the running dashboard (one app per process).

:func:`dashboards.app.create_app` fills :data:`SETTINGS`; pages read it through
:func:`index` and :func:`setting`. Background callbacks run in forked processes
and inherit it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SETTINGS: dict[str, Any] = {
    "index": None,  # dashboards.data.RunIndex
    "upload_dir": None,  # Path where validated uploads are kept (PNG re-encoded)
    "result_dir": None,  # Path where the editor's before/after images are kept
    "upload_max_bytes": 2 * 2**20,
    "upload_max_side": 1024,
    "pipeline_loader": None,  # callable(model_id) -> pipeline; default latentlens.load_pipeline
    "edit_steps": 20,  # denoising steps of an edit
    "scatter_budget": None,  # most points one /latents figure draws (None: dashboards.lod.DEFAULT_BUDGET; 0: all)
}


def index() -> Any:
    """The :class:`dashboards.data.RunIndex` of the configured root."""
    value = SETTINGS["index"]
    if value is None:
        from dashboards.data import DashboardError

        raise DashboardError("The dashboard has no run root configured; start it with `latentlens dashboard PATH`.")
    return value


def setting(name: str) -> Any:
    return SETTINGS[name]


def upload_dir() -> Path:
    path = Path(SETTINGS["upload_dir"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def result_dir() -> Path:
    path = Path(SETTINGS["result_dir"])
    path.mkdir(parents=True, exist_ok=True)
    return path
