"""PNG figures of the study: grouped bars with their 95 % intervals, drawn with Pillow (no plotting stack).

Example::

    bar_chart("claim1.png", "best probe accuracy", groups=["color", "shape"],
              series={"toy": [est_a, est_b]}, limits=(0, 1))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from latentlens.study.stats import Estimate

PALETTE = [(52, 101, 164), (204, 102, 0), (78, 154, 6), (117, 80, 123), (193, 39, 45), (90, 90, 90)]


def bar_chart(
    path: str | Path,
    title: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[Estimate]],
    limits: tuple[float, float] | None = None,
    threshold: float | None = None,
) -> Path:
    """Write a grouped bar chart: one group per label, one bar per series, whiskers = the 95 % interval.

    ``threshold`` draws a dashed line (a verdict rule's threshold).
    """
    font = ImageFont.load_default()
    names = list(series)
    group_w = max(60, 26 * max(len(names), 1) + 24)
    left, top, bottom, right = 60, 40, 70, 20 + 110
    width = left + group_w * max(len(groups), 1) + right
    height = 340
    plot_h = height - top - bottom
    values = [e for items in series.values() for e in items if math.isfinite(e.value)]
    highs = [e.high for e in values if math.isfinite(e.high)] + [e.value for e in values]
    lows = [e.low for e in values if math.isfinite(e.low)] + [e.value for e in values]
    lo, hi = limits if limits is not None else (min([0.0, *lows]), max([1.0, *highs]) * 1.05)
    if hi <= lo:
        hi = lo + 1.0

    def y(v: float) -> float:
        return top + plot_h * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), title, fill="black", font=font)
    draw.line([(left, top), (left, top + plot_h), (width - right, top + plot_h)], fill="black")
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        draw.line([(left - 4, y(v)), (left, y(v))], fill="black")
        draw.text((4, y(v) - 6), f"{v:.2f}" if hi - lo <= 10 else f"{v:.0f}", fill="black", font=font)
    if threshold is not None:
        for x in range(left, width - right, 8):
            draw.line([(x, y(threshold)), (x + 4, y(threshold))], fill=(150, 0, 0))
    bar_w = 20
    for g, label in enumerate(groups):
        x0 = left + g * group_w + 12
        for s, name in enumerate(names):
            e = series[name][g]
            colour = PALETTE[s % len(PALETTE)]
            x = x0 + s * (bar_w + 6)
            if math.isfinite(e.value):
                draw.rectangle([x, y(e.value), x + bar_w, y(lo)], fill=colour)
            if math.isfinite(e.low) and math.isfinite(e.high):
                cx = x + bar_w / 2
                draw.line([(cx, y(e.low)), (cx, y(e.high))], fill="black", width=2)
                draw.line([(cx - 5, y(e.low)), (cx + 5, y(e.low))], fill="black")
                draw.line([(cx - 5, y(e.high)), (cx + 5, y(e.high))], fill="black")
        draw.text((x0, top + plot_h + 8), label[:14], fill="black", font=font)
    for s, name in enumerate(names):  # legend
        ly = top + 8 + 18 * s
        draw.rectangle([width - right - 100, ly, width - right - 88, ly + 12], fill=PALETTE[s % len(PALETTE)])
        draw.text((width - right - 82, ly), name[:16], fill="black", font=font)
    out = Path(path)
    image.save(out)
    return out


__all__ = ["bar_chart"]
