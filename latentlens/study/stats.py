"""The study's 95 % intervals: every number it reports is an :class:`Estimate` (value, interval, n, method).

- proportions (probe accuracy, edit success, objects kept): the Wilson score interval;
- means of per-edit values (others kept, PSNR outside): the normal interval ``mean ± 1.96 s / √n``;
- pooled ratios (SDE = eff / (eff + leak) over edits): the percentile bootstrap over edits
  (2,000 resamples, seeded, so a study's numbers are reproducible).

Example::

    wilson(45, 50)            # Estimate(value=0.9, low=0.786, high=0.957, n=50, method='wilson')
    a.above(b)                # True when a's interval lies wholly above b's
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z95 = 1.959964
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A measured number with its 95 % interval ``[low, high]``, its ``n`` and how the interval was made."""

    value: float
    low: float
    high: float
    n: int
    method: str

    def above(self, other: Estimate) -> bool:
        """Whether this interval lies wholly above ``other``'s (the study's rule for "significantly higher")."""
        return _finite(self, other) and self.low > other.high

    def below(self, other: Estimate) -> bool:
        return other.above(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, percent: bool = False, digits: int = 3) -> str:
        """``0.900 [0.786, 0.957] (n=50)``; ``percent=True`` → ``90.0 % [78.6, 95.7] (n=50)``."""
        if not math.isfinite(self.value):
            return f"n/a (n={self.n})"
        if percent:
            return f"{100 * self.value:.1f} % [{100 * self.low:.1f}, {100 * self.high:.1f}] (n={self.n})"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] (n={self.n})"


def _finite(*items: Estimate) -> bool:
    return all(math.isfinite(x.low) and math.isfinite(x.high) for x in items)


def missing(n: int = 0) -> Estimate:
    """A number that could not be measured (NaN; never passes or fails a rule)."""
    return Estimate(math.nan, math.nan, math.nan, n, "none")


def wilson(successes: float, n: int) -> Estimate:
    """A proportion ``successes / n`` with its Wilson score interval."""
    if n <= 0:
        return missing(0)
    k = int(round(successes))
    p = k / n
    denom = 1.0 + Z95 * Z95 / n
    centre = (p + Z95 * Z95 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 * Z95 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Estimate(p, low, high, n, "wilson")


def mean_interval(values: Sequence[float]) -> Estimate:
    """The mean of ``values`` (NaNs dropped) with the normal interval ``± 1.96 s / √n``."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    if len(x) == 0:
        return missing(0)
    mean = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else math.inf
    return Estimate(mean, mean - half, mean + half, len(x), "normal")


def pooled_sde(inside: np.ndarray, inside_px: np.ndarray, outside: np.ndarray, outside_px: np.ndarray) -> float:
    """SDE pooled over edits from per-edit sums (``latentlens.editor.bench.sde_sums``); NaN when nothing changed."""
    eff = inside.sum() / max(inside_px.sum(), 1)
    leak = outside.sum() / max(outside_px.sum(), 1)
    return float(eff / (eff + leak)) if eff + leak > 0 else math.nan


def sde_interval(records: Sequence[dict[str, Any]], seed: int = 0) -> Estimate:
    """Pooled SDE of edit records carrying ``sde_*`` sums, with a percentile-bootstrap interval over edits."""
    rows = [r for r in records if "sde_inside_sum" in r]
    if not rows:
        return missing(0)
    cols = [
        np.asarray([float(r[k]) for r in rows])
        for k in ("sde_inside_sum", "sde_inside_pixels", "sde_outside_sum", "sde_outside_pixels")
    ]
    value = pooled_sde(*cols)
    if len(rows) < 2 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, len(rows), "bootstrap")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        pick = rng.integers(len(rows), size=len(rows))
        draws.append(pooled_sde(*(c[pick] for c in cols)))
    finite = np.asarray([d for d in draws if math.isfinite(d)])
    low, high = (
        (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))) if len(finite) else (math.nan,) * 2
    )
    return Estimate(value, low, high, len(rows), "bootstrap")


__all__ = ["Estimate", "Z95", "mean_interval", "missing", "pooled_sde", "sde_interval", "wilson"]
