"""The study's verdict rules: each claim's verdict follows from the numbers in ``findings.json`` alone.

Every number is an estimate with a 95 % interval (:mod:`latentlens.study.stats`). Per model, a claim's
test is *pass*, *fail* or *inconclusive* (an interval straddles the threshold, or a number is missing):

- **claim 1** (text and image space each decomposable into semantic directions): for the image stream
  and for the text space (the blocks' text stream where the model has one — the MM-DiT —, else the text
  encoder's states the blocks read, ``text.tokens``), every attribute's best held-out linear-probe
  accuracy has its interval at or above ``CLAIM1_ACCURACY``: *pass*; some attribute's interval wholly
  below it, in some space: *fail*.
- **claim 2** (a disentangled space allowing precise control): every attribute's SDE of the EMS edit
  (both spaces) has its interval at or above ``CLAIM2_SDE``, and, where two-object scenes were
  edited, every attribute keeps the other object with its interval at or above ``CLAIM2_OTHER_KEPT``:
  *pass*; any interval wholly below its threshold: *fail*.
- **claim 3** (a good edit needs both spaces): EMS with both spaces *beats* an ablation (text only,
  image only) when on at least one of success, others kept and PSNR outside its interval lies wholly
  above the ablation's, and on none wholly below. *pass*: both ablations beaten; *fail*: an ablation
  beats EMS-both (the same rule reversed), or neither ablation is beaten on any metric.

Across models, a claim's verdict for the DiTs is **holds** (every DiT passes), **fails** (every DiT
fails) or **mixed** (anything else); the UNet's test is reported beside it. The comparative claim
(**dit_vs_unet**: DiTs keep non-target semantics better than UNets) compares what EMS-both leaves
alone: others kept and PSNR outside the edited object (one-object edits) and, where both models were
measured on two-object scenes, the PSNR inside the other object per edited attribute. A DiT is
*better* than a UNet when one of these intervals lies wholly above the UNet's and none wholly below,
*worse* in the reverse case, *mixed* when some lie above and some below, and *no different* when all
overlap; **holds** when every DiT is better than every UNet, **fails** when every DiT is worse or no
different, **mixed** otherwise.

Example::

    verdicts = decide(findings["models"])      # what `latentlens study` wrote as findings["verdicts"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from latentlens.study.stats import Estimate

Test = Literal["pass", "fail", "inconclusive"]
Verdict = Literal["holds", "fails", "mixed", "not measured"]

CLAIM1_ACCURACY = 0.9
CLAIM2_SDE = 0.75
CLAIM2_OTHER_KEPT = 0.8
CLAIM3_METRICS = ("success", "preserved", "psnr_outside")
ABLATIONS = ("ems_text", "ems_image")


def estimate(data: Mapping[str, Any]) -> Estimate:
    """An :class:`Estimate` from its ``findings.json`` form (NaN where JSON holds null)."""

    def f(key: str) -> float:
        value = data.get(key)
        return math.nan if value is None else float(value)

    return Estimate(f("value"), f("low"), f("high"), int(data.get("n") or 0), str(data.get("method", "")))


def _threshold_test(items: list[tuple[str, Estimate]], threshold: float) -> tuple[Test, list[str]]:
    """pass if every interval is at or above ``threshold``, fail if one is wholly below, else inconclusive."""
    below = [(k, e) for k, e in items if math.isfinite(e.high) and e.high < threshold]
    unsure = [(k, e) for k, e in items if not (math.isfinite(e.low) and e.low >= threshold)]
    if not items:
        return "inconclusive", ["nothing was measured"]
    if below:
        return "fail", [f"{k}: {e.text()} is wholly below {threshold}" for k, e in below]
    if unsure:
        return "inconclusive", [f"{k}: {e.text()} does not clear {threshold}" for k, e in unsure]
    return "pass", [
        f"all {len(items)} intervals are at or above {threshold} (lowest: {min(items, key=lambda x: x[1].low)[0]})"
    ]


def text_space(claim1: Mapping[str, Any]) -> str:
    """The key of the model's text space in ``claim1["streams"]``: ``"txt"`` (block text stream) or ``"text_encoder"``."""
    return "txt" if claim1.get("streams", {}).get("txt") else "text_encoder"


def claim1_test(model: Mapping[str, Any]) -> tuple[Test, list[str]]:
    streams = model["claim1"]["streams"]
    items: list[tuple[str, Estimate]] = []
    for space in ("img", text_space(model["claim1"])):
        for attribute, cell in sorted((streams.get(space) or {}).items()):
            items.append((f"{space} {attribute}", estimate(cell["accuracy"])))
    return _threshold_test(items, CLAIM1_ACCURACY)


def claim2_test(model: Mapping[str, Any]) -> tuple[Test, list[str]]:
    claim = model["claim2"]
    sde_test, sde_why = _threshold_test(
        [(f"SDE {a}", estimate(e)) for a, e in sorted(claim["sde"].items())], CLAIM2_SDE
    )
    two = claim.get("two_object") or {}
    if not two:
        return sde_test, sde_why
    kept_test, kept_why = _threshold_test(
        [(f"other object kept, {a} edits", estimate(c["other_object_kept"])) for a, c in sorted(two.items())],
        CLAIM2_OTHER_KEPT,
    )
    tests = {sde_test, kept_test}
    combined: Test = "fail" if "fail" in tests else ("pass" if tests == {"pass"} else "inconclusive")
    return combined, sde_why + kept_why


def _above_below(a: Mapping[str, Any], b: Mapping[str, Any], metrics: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The metrics on which ``a``'s interval lies wholly above ``b``'s, and those on which it lies wholly below."""
    above = [m for m in metrics if estimate(a[m]).above(estimate(b[m]))]
    below = [m for m in metrics if estimate(a[m]).below(estimate(b[m]))]
    return above, below


def _beats(a: Mapping[str, Any], b: Mapping[str, Any], metrics: tuple[str, ...]) -> tuple[bool, list[str]]:
    """``a`` beats ``b``: on some metric a's interval is wholly above b's, and on none wholly below."""
    above, below = _above_below(a, b, metrics)
    return bool(above) and not below, above


def claim3_test(model: Mapping[str, Any]) -> tuple[Test, list[str]]:
    methods = model["claim3"]["methods"]
    both = methods["ems"]
    why: list[str] = []
    beaten = []
    for ablation in ABLATIONS:
        wins, on = _beats(both, methods[ablation], CLAIM3_METRICS)
        loses, against = _beats(methods[ablation], both, CLAIM3_METRICS)
        if loses:
            return "fail", [f"{ablation} beats EMS-both on {', '.join(against)}"]
        if wins:
            beaten.append(ablation)
            why.append(f"EMS-both beats {ablation} on {', '.join(on)}")
        else:
            why.append(f"EMS-both does not beat {ablation} on any of {', '.join(CLAIM3_METRICS)}")
    if len(beaten) == len(ABLATIONS):
        return "pass", why
    if not beaten:
        return "fail", why
    return "inconclusive", why


CLAIM_TESTS = {"claim1": claim1_test, "claim2": claim2_test, "claim3": claim3_test}


def _across(tests: dict[str, Test]) -> Verdict:
    if not tests:
        return "not measured"
    values = set(tests.values())
    if values == {"pass"}:
        return "holds"
    if values == {"fail"}:
        return "fails"
    return "mixed"


def non_target_kept(model: Mapping[str, Any]) -> dict[str, Any]:
    """What EMS-both leaves alone, by metric: one-object others kept and PSNR outside, two-object other PSNR."""
    both = model["claim3"]["methods"]["ems"]
    kept = {"preserved": both["preserved"], "psnr_outside": both["psnr_outside"]}
    for attribute, cell in sorted((model["claim2"].get("two_object") or {}).items()):
        if cell.get("other_psnr"):
            kept[f"two-object other PSNR, {attribute} edits"] = cell["other_psnr"]
    return kept


Comparison = Literal["better", "worse", "mixed", "no different"]
COMPARISON_WORDS: dict[Comparison, str] = {
    "better": "better than",
    "worse": "worse than",
    "mixed": "better on some measures and worse on others than",
    "no different": "no different (every interval overlaps) from",
}


def _compare(a: Mapping[str, Any], b: Mapping[str, Any], metrics: tuple[str, ...]) -> Comparison:
    """``a`` against ``b`` over ``metrics``, by which intervals lie wholly above or below the other's."""
    above, below = _above_below(a, b, metrics)
    return "mixed" if above and below else "better" if above else "worse" if below else "no different"


def _side_by_side(metric: str, a: Estimate, b: Estimate) -> str:
    """``psnr_outside 43.9 [43.2, 44.5] (n=160) > 40.1 [39.5, 40.7] (n=160)`` (``≈``: the intervals overlap)."""
    sign = ">" if a.above(b) else "<" if a.below(b) else "≈"
    digits = 1 if "psnr" in metric.lower() else 3
    return f"{metric} {a.text(digits=digits)} {sign} {b.text(digits=digits)}"


def dit_vs_unet(models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The comparative claim: DiTs keep non-target semantics better than UNets (the metrics of :func:`non_target_kept`)."""
    dits = [n for n, m in models.items() if m["dit"]]
    unets = [n for n, m in models.items() if not m["dit"]]
    pairs: dict[str, Comparison] = {}
    why = []
    for d in dits:
        for u in unets:
            dit_kept, unet_kept = non_target_kept(models[d]), non_target_kept(models[u])
            metrics = tuple(m for m in dit_kept if m in unet_kept)  # two-object cells only where both have them
            outcome = _compare(dit_kept, unet_kept, metrics)
            pairs[f"{d} vs {u}"] = outcome
            numbers = "; ".join(_side_by_side(m, estimate(dit_kept[m]), estimate(unet_kept[m])) for m in metrics)
            why.append(f"{d} is {COMPARISON_WORDS[outcome]} {u}: {numbers}")
    outcomes = set(pairs.values())
    if not pairs:
        verdict: Verdict = "not measured"
    elif outcomes == {"better"}:
        verdict = "holds"
    elif outcomes <= {"worse", "no different"}:
        verdict = "fails"
    else:
        verdict = "mixed"
    return {"verdict": verdict, "pairs": pairs, "why": why or ["the study needs at least one DiT and one UNet"]}


def decide(models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Every verdict from the per-model numbers (the ``models`` part of ``findings.json``)."""
    out: dict[str, Any] = {}
    for claim, test in CLAIM_TESTS.items():
        per_model = {name: test(m) for name, m in models.items()}
        dit_tests = {n: t for n, (t, _) in per_model.items() if models[n]["dit"]}
        out[claim] = {
            "verdict": _across(dit_tests),
            "tests": {n: t for n, (t, _) in per_model.items()},
            "why": {n: w for n, (_, w) in per_model.items()},
            "unet": {n: t for n, (t, _) in per_model.items() if not models[n]["dit"]},
        }
    out["dit_vs_unet"] = dit_vs_unet(models)
    return out


__all__ = [
    "ABLATIONS",
    "CLAIM1_ACCURACY",
    "CLAIM2_OTHER_KEPT",
    "CLAIM2_SDE",
    "CLAIM3_METRICS",
    "claim1_test",
    "claim2_test",
    "claim3_test",
    "decide",
    "dit_vs_unet",
    "estimate",
    "non_target_kept",
    "text_space",
]
