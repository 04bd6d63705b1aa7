"""``findings.md`` and the figures of a study, from its ``findings.json`` document alone.

Example::

    write_report(findings, "runs/study")      # runs/study/findings.md, runs/study/figures/*.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latentlens.study import verdicts as rules
from latentlens.study.figures import bar_chart
from latentlens.study.stats import Estimate
from latentlens.study.verdicts import estimate, text_space

METHOD_LABELS = {
    "ems": "EMS both",
    "ems_text": "EMS text only",
    "ems_image": "EMS image only",
    "prompt_swap": "prompt swap",
}


def _cell(data: dict[str, Any] | None, percent: bool = False, digits: int = 3) -> str:
    return estimate(data).text(percent=percent, digits=digits) if data else "—"


def _when(measured: dict[str, Any] | None) -> str:
    """``2026-12-02T15:50:01, 612 s`` plus ``(reused)`` when an earlier run of the study measured the model."""
    if not measured:
        return "—"
    seconds = measured.get("seconds")
    text = f"{measured.get('date') or 'date not recorded'}, {f'{seconds:.0f} s' if seconds is not None else 'time not recorded'}"
    return text + (" (reused)" if measured.get("reused") else "")


def _figures(findings: dict[str, Any], folder: Path) -> list[tuple[str, str]]:
    models = findings["models"]
    names = list(models)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, str]] = []
    attributes = findings["attributes"]

    def series(get: Any) -> dict[str, list[Estimate]]:
        return {name: [get(models[name], a) for a in attributes] for name in names}

    def acc(space_of: Any) -> Any:
        def get(m: dict[str, Any], a: str) -> Estimate:
            cell = (m["claim1"]["streams"].get(space_of(m)) or {}).get(a)
            return estimate(cell["accuracy"]) if cell else estimate({})

        return get

    for key, title, space_of in (
        ("claim1_image", "claim 1: best held-out probe accuracy, image stream", lambda m: "img"),
        ("claim1_text", "claim 1: best held-out probe accuracy, text space", lambda m: text_space(m["claim1"])),
    ):
        path = bar_chart(folder / f"{key}.png", title, attributes, series(acc(space_of)), (0, 1), rules.CLAIM1_ACCURACY)
        out.append((title, path.name))
    path = bar_chart(
        folder / "claim2_sde.png", "claim 2: SDE per attribute (EMS both)", attributes,
        series(lambda m, a: estimate(m["claim2"]["sde"].get(a, {}))), (0, 1), rules.CLAIM2_SDE,
    )  # fmt: skip
    out.append(("claim 2: SDE per attribute (EMS both)", path.name))
    labels = [METHOD_LABELS[m] for m in ("ems", "ems_text", "ems_image")]
    for metric, limits in (("success", (0, 1)), ("preserved", (0, 1)), ("psnr_outside", None)):
        title = f"claim 3: {metric.replace('_', ' ')} by method"
        data = {
            name: [estimate(models[name]["claim3"]["methods"][m][metric]) for m in ("ems", "ems_text", "ems_image")]
            for name in names
        }
        path = bar_chart(folder / f"claim3_{metric}.png", title, labels, data, limits)
        out.append((title, path.name))
    return out


def render_markdown(findings: dict[str, Any], figures: list[tuple[str, str]]) -> str:
    models = findings["models"]
    names = list(models)
    attributes = findings["attributes"]
    v = findings["verdicts"]
    lines = [
        "# Three architectures on one ground truth: the paper's claims measured",
        "",
        f"Command: `{findings['command']}`  ",
        f"Machine: {findings['machine']}; {findings['date']}; {findings['seconds']:.0f} s for this run (models "
        "reused from an earlier run of the same study folder are marked in the table).  ",
        f"Every number is a value with its 95 % interval and its n (proportions: Wilson; means: ± 1.96 s/√n; "
        f"SDE: bootstrap over edits). Edits per model: n = {findings['n']}; probe samples: "
        f"{findings['probe_samples']}; the same prompts and noise seeds for every model.",
        "",
        "| model | family | denoiser | parameters | sampling steps | measured |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        lines.append(
            f"| {name} | {m['family']} | {m['denoiser_class']} | {m['parameters'] / 1e6:.2f} M | "
            f"{m['num_inference_steps']} | {_when(findings.get('measured', {}).get(name))} |"
        )
    lines += ["", "## Verdicts", "", "| claim | verdict (DiTs) | per model | UNet |", "|---|---|---|---|"]
    claims = {
        "claim1": "1 — text and image space each decomposable",
        "claim2": "2 — disentangled, precise control",
        "claim3": "3 — a good edit needs both spaces",
    }
    for key, label in claims.items():
        per_model = ", ".join(f"{n}: {t}" for n, t in v[key]["tests"].items())
        unet = ", ".join(f"{n}: {t}" for n, t in v[key]["unet"].items()) or "—"
        lines.append(f"| {label} | **{v[key]['verdict']}** | {per_model} | {unet} |")
    lines.append(f"| DiTs keep non-target semantics better than UNets | **{v['dit_vs_unet']['verdict']}** | "
                 f"{'; '.join(v['dit_vs_unet']['why'])} | |")  # fmt: skip
    lines += ["", "Why (the numbers that decide each test):", ""]
    for key in claims:
        for name, why in v[key]["why"].items():
            lines.append(f"- {key}, {name}: " + "; ".join(why))
    lines += ["", "Rules (`latentlens/study/verdicts.py`):", ""]
    doc = (rules.__doc__ or "").split("Example::")[0].strip().splitlines()
    lines += [line for line in doc[2:]]

    lines += ["", "## Claim 1 — best held-out linear probe per attribute", ""]
    header = "| attribute | " + " | ".join(f"{n} image | {n} text space" for n in names) + " |"
    lines += [header, "|---|" + "---|---|" * len(names)]
    for a in attributes:
        cells = []
        for n in names:
            streams = models[n]["claim1"]["streams"]
            for space in ("img", text_space(models[n]["claim1"])):
                c = (streams.get(space) or {}).get(a)
                where = "" if not c else f" at {c['site']} step {c['step']}, sel. {c['selectivity']:.2f}"
                cells.append(_cell(c["accuracy"] if c else None) + where)
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Text space: the blocks' text stream (`blocks.*.resid_out.txt`) where the model updates the text (MM-DiT); "
        "the text encoder's states the blocks attend to (`text.tokens`, the same MiniLM states for every toy) "
        "where it does not (PixArt, UNet).",
        "",
        "## Claim 2 — SDE per attribute and two-object leakage",
        "",
        "| attribute | " + " | ".join(f"{n} EMS both | {n} prompt swap" for n in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    for a in attributes:
        cells = []
        for n in names:
            c2 = models[n]["claim2"]
            cells += [_cell(c2["sde"].get(a)), _cell(c2["sde_prompt_swap"].get(a))]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    object_attributes = sorted({a for n in names for a in (models[n]["claim2"].get("two_object") or {})})
    if object_attributes:
        lines += [
            "",
            "Two-object scenes, one attribute of one object edited (same seed): the other object kept (all five "
            "attributes read as before), for EMS (both spaces) and for prompt swap, and the PSNR inside the other "
            "object under EMS.",
            "",
            "| edited attribute | "
            + " | ".join(f"{n} EMS other kept | {n} prompt swap other kept | {n} EMS other PSNR (dB)" for n in names)
            + " |",
            "|---|" + "---|---|---|" * len(names),
        ]
        for a in object_attributes:
            cells = []
            for n in names:
                c2 = models[n]["claim2"]
                ems, swap = (c2.get("two_object") or {}).get(a), (c2.get("two_object_prompt_swap") or {}).get(a)
                cells += [
                    _cell(ems and ems["other_object_kept"], True),
                    _cell(swap and swap["other_object_kept"], True),
                    _cell(ems and ems["other_psnr"], digits=1),
                ]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Claim 3 — EMS with both spaces vs text only vs image only",
        "",
        "| model | method | success | others kept | all 4 kept | PSNR outside (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        for method, label in METHOD_LABELS.items():
            r = models[n]["claim3"]["methods"][method]
            lines.append(
                f"| {n} | {label} | {_cell(r['success'], True)} | {_cell(r['preserved'])} | "
                f"{_cell(r['all_kept'], True)} | {_cell(r['psnr_outside'], digits=1)} |"
            )
    lines += ["", "## Figures", ""]
    lines += [f"![{title}](figures/{name})" for title, name in figures]
    return "\n".join(lines) + "\n"


def write_report(findings: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/findings.md`` and ``out_dir/figures/*.png``; returns the Markdown path."""
    out = Path(out_dir)
    figures = _figures(findings, out / "figures")
    path = out / "findings.md"
    path.write_text(render_markdown(findings, figures))
    return path


__all__ = ["render_markdown", "write_report"]
