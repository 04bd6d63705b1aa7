"""``latentlens study``: the paper's three claims measured on several shapes-world models, with verdicts.

:func:`run_study` loads every model first (a missing or untrained model is an error before any
work), then for each records and probes it, runs the edit benchmark with EMS both / text only /
image only (and prompt swap) and two-object EMS edits, on the same prompts and seeds
(:mod:`latentlens.study.measure`). A model already measured in ``OUT`` with the same settings and
weights is reused from ``OUT/models/<name>/claims.json``, so a stopped study resumes. It writes
``OUT/findings.json`` (``models`` → ``{name: {claim1, claim2, claim3}}`` and ``verdicts``),
``OUT/findings.md`` with tables and ``OUT/figures/*.png``. Verdicts follow from the numbers by the rules in :mod:`latentlens.study.verdicts`.

Example::

    from latentlens.study import run_study
    findings = run_study(["toy", "toy-pixart", "toy-unet"], "runs/study", n=200)
    findings["verdicts"]["claim3"]["verdict"]     # 'holds', 'fails' or 'mixed'
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentlens.errors import ConfigError, StoreError

MARKER = ".latentlens-study"
FINDINGS_JSON = "findings.json"
#: one model's finished measurements and the settings they were made with (``OUT/models/<name>/claims.json``)
CLAIMS_JSON = "claims.json"


def resolve_models(models: Sequence[str]) -> dict[str, str]:
    """``{display name: model}`` for toy names and toy pipeline folders; every mistake is refused here.

    A toy model whose weights are not installed raises :class:`StoreError` naming the command that
    creates them; a folder that is not a shapes-world (toy) pipeline is refused, since the oracle
    judges the study.
    """
    from latentlens.models import TOY_NAMES, is_toy_model
    from latentlens.toy.architectures import BY_MODEL_NAME

    if not models:
        raise ConfigError("The study needs at least one model, e.g. --models toy,toy-pixart,toy-unet.")
    out: dict[str, str] = {}
    for model in models:
        model = str(model).strip()
        if model in TOY_NAMES:
            toy = BY_MODEL_NAME[model]
            if toy.arch != "mmdit":
                toy.require_installed()
            name = model
        else:
            path = Path(model).expanduser()
            if not path.is_dir():
                raise ConfigError(
                    f"Study model {model!r} is neither a toy model ({', '.join(TOY_NAMES)}) nor a pipeline folder."
                )
            if not is_toy_model(path):
                raise ConfigError(
                    f"{path} is not a toy pipeline; the study judges images with the shapes-world oracle, so every "
                    "model must be trained on the shapes world (toy, toy-pixart, toy-unet or a folder they saved)."
                )
            name = path.resolve().name
        if name in out:
            raise ConfigError(f"Study model {name!r} is listed twice; list each model once.")
        out[name] = model
    return out


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise StoreError(f"The study folder {out} is a file; give --out a folder path.")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise StoreError(
            f"The study folder {out} holds files latentlens study did not write; give an empty or new folder."
        )


def run_study(
    models: Sequence[str],
    out_dir: str | Path,
    *,
    n: int = 200,
    probe_samples: int | None = None,
    two_object_pairs: int | None = None,
    num_inference_steps: int | None = None,
    pipelines: dict[str, Any] | None = None,
    command: str = "",
    quiet: bool = True,
) -> dict[str, Any]:
    """Measure every model, decide the verdicts, write the findings; returns the ``findings.json`` document.

    ``n``: edits per model (the benchmark cycles through the five attributes); ``probe_samples``:
    recorded prompts for the probes (default ``max(2 n, 50)``); ``two_object_pairs``: two-object prompt
    edits per object attribute (default ``max(n // 3, 2)``); ``pipelines``: already loaded pipelines
    by display name (skips loading).
    """
    from latentlens.models import load_pipeline
    from latentlens.shapes import ATTRIBUTES
    from latentlens.study.measure import measure_model
    from latentlens.study.report import write_report
    from latentlens.study.verdicts import decide

    if isinstance(n, bool) or not isinstance(n, int) or n < 5:
        raise ConfigError(f"--n {n!r} is too small: the edit benchmark needs at least 5 edits (one per attribute).")
    if num_inference_steps is not None and num_inference_steps < 2:
        raise ConfigError(f"num_inference_steps must be at least 2, got {num_inference_steps}.")
    out = Path(out_dir)
    _check_out(out)
    named = resolve_models(models)
    loaded = dict(pipelines or {})
    for name, model in named.items():  # every model loads before any work
        if name not in loaded:
            loaded[name] = load_pipeline(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by latentlens study\n")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    measured: dict[str, dict[str, Any]] = {}  # per model: when, how long, and whether reused from an earlier run
    for name in named:
        folder = out / "models" / name
        settings = {
            "n": n, "probe_samples": probe_samples, "two_object_pairs": two_object_pairs,
            "num_inference_steps": num_inference_steps, "weights": weights_fingerprint(loaded[name]),
        }  # fmt: skip
        finished = _finished_claims(folder, settings)
        if finished is not None:
            results[name], measured[name] = finished
            if not quiet:
                print(f"study: {name} was measured with these settings before; its claims are reused", flush=True)
            continue
        if folder.exists():
            shutil.rmtree(folder)  # an unfinished or differently-set measurement (the folder carries our marker)
        if not quiet:
            print(f"study: measuring {name}", flush=True)
        model_started = time.perf_counter()
        results[name] = measure_model(
            loaded[name], folder, n=n, probe_samples=probe_samples, two_object_pairs=two_object_pairs,
            num_inference_steps=num_inference_steps, quiet=quiet,
        )  # fmt: skip
        measured[name] = {"date": _now(), "seconds": round(time.perf_counter() - model_started, 1), "reused": False}
        _write_json(folder / CLAIMS_JSON, {"settings": settings, "claims": results[name], "measured": measured[name]})
    first = next(iter(results.values()))
    findings: dict[str, Any] = {
        "models": results,
        "verdicts": decide(results),
        "attributes": list(ATTRIBUTES),
        "n": n,
        "probe_samples": first["claim1"]["samples"],
        "command": command or f"latentlens study --models {','.join(named.values())} --out {out} --n {n}",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", Python {platform.python_version()}",
        "date": _now(),
        "seconds": round(time.perf_counter() - started, 1),
        "measured": measured,
    }
    _write_json(out / FINDINGS_JSON, findings)
    findings = json.loads((out / FINDINGS_JSON).read_text())  # the report reads exactly what was written
    write_report(findings, out)
    return findings


def weights_fingerprint(pipe: Any) -> str:
    """SHA-256 (first 16 hex digits) of the denoiser's weights: a retrained model is measured again."""
    import hashlib

    import torch

    from latentlens.adapters import split_target

    digest = hashlib.sha256()
    for key, tensor in sorted(split_target(pipe)[0].state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _finished_claims(folder: Path, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The claims of an earlier, finished measurement made with exactly ``settings`` and when it was made; else None."""
    try:
        saved = json.loads((folder / CLAIMS_JSON).read_text())
    except (OSError, ValueError):
        return None  # never finished, or damaged: measured again
    if not isinstance(saved, dict) or saved.get("settings") != settings or not isinstance(saved.get("claims"), dict):
        return None
    earlier = saved.get("measured")
    if not isinstance(earlier, dict):
        earlier = {}  # studies before the measurement record lack it
    return saved["claims"], {"date": earlier.get("date"), "seconds": earlier.get("seconds"), "reused": True}


def _write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` (NaN as null) whole or not at all: a stopped study never leaves half a file."""
    from latentlens.atomicfile import write_atomic

    write_atomic(path, (json.dumps(_clean(document), indent=2, allow_nan=False) + "\n").encode())


def _clean(value: Any) -> Any:
    """JSON-ready: NaN and ±inf become null (a number that could not be measured)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


__all__ = ["CLAIMS_JSON", "FINDINGS_JSON", "resolve_models", "run_study", "weights_fingerprint"]
