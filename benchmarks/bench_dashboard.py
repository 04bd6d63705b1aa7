"""Dashboard performance: server callback latency, first paint, and a 100,000-point WebGL scatter.

Measures, on synthetic runs written through the store API (no model needed):

1. server callbacks: every main page callback, called over HTTP (Flask test client, Dash's own
   JSON protocol, serialisation included) on a 10,000-sample run; cold (first read of a cell) and
   warm calls; p50 / p95 / max in ms. Target: p95 ≤ 300 ms.
2. first paint in headless Chromium (``performance`` paint entries) and time until the page's
   main content is on screen, for ``/`` and ``/latents``. Target: first paint ≤ 2 s.
3. a 100,000-point scatter on ``/latents``, once per ``--budgets`` value: 0 = every point in the
   ``scattergl`` (the old behaviour, the baseline), N = the level of detail of
   :mod:`dashboards.lod` (at most N points drawn, density for the rest, the points in view fetched
   after each zoom/pan). Time to first render, then zoom/pan (``Plotly.relayout``) and legend
   toggles (``Plotly.restyle``) timed in the page as the user perceives them: until the points of
   the new view are drawn (relayout → server round trip → redraw, then two animation frames).
   Target: zoom/pan p95 ≤ ~300 ms even with software WebGL. Also the zoom callback alone, over HTTP.

Usage::

    nice -n 10 python benchmarks/bench_dashboard.py            # ~3 minutes on a 2-core CPU
    python benchmarks/bench_dashboard.py --budgets 0,5000,10000,15000,20000 --repeats 1   # choose a budget
    python benchmarks/bench_dashboard.py --samples 2000 --points 20000 --json   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboards.lod import DEFAULT_BUDGET  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 1), "p95_ms": round(p95, 1),
            "max_ms": round(ordered[-1], 1)}


# --------------------------------------------------------------------------- server callbacks
def _payload(app: Any, key: str, inputs: list[Any], state: list[Any]) -> dict[str, Any]:
    spec = app.callback_map[key]
    outputs = []
    for part in key.strip(".").split("..."):
        ident, prop = part.split("@")[0].rsplit(".", 1)
        outputs.append({"id": ident, "property": prop})
    return {
        "output": key,
        "outputs": outputs if len(outputs) > 1 else outputs[0],
        "inputs": [dict(i, value=v) for i, v in zip(spec["inputs"], inputs)],
        "state": [dict(s, value=v) for s, v in zip(spec["state"], state)],
        "changedPropIds": [f"{spec['inputs'][0]['id']}.{spec['inputs'][0]['property']}"],
    }


def _key(app: Any, first_output: str, input_prop: str | None = None) -> str:
    """The callback_map key of the callback whose first output is ``first_output`` (and that has input ``input_prop``)."""
    matches = [k for k, spec in app.callback_map.items() if k.strip(".").split("@")[0].split("...")[0] == first_output
               and (input_prop is None or any(f"{i['id']}.{i['property']}" == input_prop for i in spec["inputs"]))]
    if not matches:
        raise KeyError(f"no callback with output {first_output}; have {list(app.callback_map)[:5]}...")
    return matches[0]


def bench_callbacks(root: Path, run_id: str, site: str, steps: int, repeats: int) -> dict[str, Any]:
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    app = create_app(root, cache_dir=root.parent / "bench-cache")
    client = app.server.test_client()
    client.get("/")  # Dash sets itself up on the first request
    state = {"run": run_id}
    calls = {
        "runs table": (_key(app, "runs-table.children"), [state], []),
        "probe grid": (_key(app, "probes-heatmap.figure"), ["color", "img", "accuracy"], [state]),
        "latents scatter (PCA)": (_key(app, "latents-scatter.figure", "latents-site.value"), [site, None, "pca", "color"], [state]),
        "latents hover": (_key(app, "latents-tooltip.children"), [{"points": [{"customdata": 7}]}], [state]),
        "attention maps": (_key(app, "attention-figure.figure"), [3, 2, 0, 1, []], [state]),
        "direction histogram": (_key(app, "directions-hist.figure"), ["color/blue"], [state]),
    }
    out: dict[str, Any] = {}
    for name, (key, inputs, st) in calls.items():
        cold, warm = [], []
        for step in range(steps):
            values = list(inputs)
            if name.startswith("latents scatter"):
                values[1] = step
            if name == "attention maps":
                values[3] = step
            for r in range(repeats):
                started = time.perf_counter()
                response = client.post("/_dash-update-component", json=_payload(app, key, values, st))
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code not in (200, 204):
                    raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.data[:300]!r}")
                if b"ll-message ll-error" in response.data:
                    raise RuntimeError(f"{name}: the callback reported an error: {response.data[:300]!r}")
                (cold if r == 0 else warm).append(elapsed)  # cold: first call with these inputs
        out[name] = {"all": percentiles(cold + warm), "cold": percentiles(cold), "warm": percentiles(warm),
                     "bytes": len(response.data)}
    return out


# --------------------------------------------------------------------------- browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(root: Path, cache: Path, scatter_budget: int | None = None) -> tuple[str, Any]:
    from werkzeug.serving import make_server

    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    app = create_app(root, cache_dir=cache, scatter_budget=scatter_budget)
    port = _free_port()
    server = make_server("127.0.0.1", port, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{port}", server


def _driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options)


def _wait(driver: Any, script: str, timeout: float = 60.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if driver.execute_script(script):
            return time.perf_counter() - started
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for: {script}")


PAINT = """return performance.getEntriesByType('paint').map(e => [e.name, e.startTime]);"""
SCATTER_READY = """
const gd = document.querySelector('#latents-scatter .js-plotly-plot');
if (!(gd && gd._fullLayout && gd._fullData && gd.layout.meta && document.querySelector('#latents-scatter .scatterlayer, #latents-scatter .gl-container canvas'))) return false;
const drawn = gd._fullData.filter(t => t.type.startsWith('scatter')).reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
return drawn === gd.layout.meta.shown && drawn > 0 ? drawn : false;
"""
# One interaction, timed in the page from the call until the points of the new view are drawn:
# with a level of detail that is relayout → server round trip (the points in view) → redraw,
# i.e. until the figure's meta.view is the requested view, then two animation frames.
TIMED = """
const done = arguments[arguments.length - 1];
const gd = document.querySelector('#latents-scatter .js-plotly-plot');
const kind = arguments[0], k = arguments[1], server = arguments[2];
const t0 = performance.now();
let p, want = null;
if (kind === 'zoom') {
  const xr = gd._fullLayout.xaxis.range, yr = gd._fullLayout.yaxis.range;
  const f = (k % 2 === 0) ? 0.8 : 1.25;
  const cx = (xr[0] + xr[1]) / 2, cy = (yr[0] + yr[1]) / 2;
  want = {x: [cx - (cx - xr[0]) * f, cx + (xr[1] - cx) * f], y: [cy - (cy - yr[0]) * f, cy + (yr[1] - cy) * f]};
  p = Plotly.relayout(gd, {'xaxis.range': want.x, 'yaxis.range': want.y});
} else if (kind === 'pan') {
  const xr = gd._fullLayout.xaxis.range; const d = (xr[1] - xr[0]) * 0.1 * (k % 2 === 0 ? 1 : -1);
  want = {x: [xr[0] + d, xr[1] + d]};
  p = Plotly.relayout(gd, {'xaxis.range': want.x});
} else {
  const traces = gd.data.map((t, i) => i).filter(i => gd.data[i].type === 'scattergl');
  const i = traces[k % traces.length];
  const vis = gd.data[i].visible === 'legendonly' ? true : 'legendonly';
  p = Plotly.restyle(gd, {visible: vis}, [i]);
  want = null;
}
const close = (a, b) => a && b && Math.abs(a[0] - b[0]) <= 1e-9 * (1 + Math.abs(b[0])) && Math.abs(a[1] - b[1]) <= 1e-9 * (1 + Math.abs(b[1]));
const arrived = () => {
  const v = (gd.layout.meta || {}).view || {};
  return close(v.x, want.x) && (!want.y || close(v.y, want.y));
};
let view = null;  // the view moved: the points already drawn are redrawn at the new ranges
const finish = () => requestAnimationFrame(() => requestAnimationFrame(() => done([view, performance.now() - t0])));
p.then(() => {
  requestAnimationFrame(() => requestAnimationFrame(() => { if (view === null) view = performance.now() - t0; }));
  if (!server || !want) return finish();
  const poll = () => { if (arrived()) finish(); else if (performance.now() - t0 > 30000) done([view, -1]); else requestAnimationFrame(poll); };
  poll();
});
"""


def bench_pages(root: Path, cache: Path) -> dict[str, Any]:
    """First paint and time to main content of ``/`` and ``/latents`` (max of 3 loads)."""
    out: dict[str, Any] = {}
    base, server = _serve(root, cache)
    driver = _driver()
    try:
        for path, ready in (("/", "return !!document.querySelector('#runs-table table')"), ("/latents", SCATTER_READY)):
            samples = []
            for _ in range(3):
                driver.get("about:blank")
                started = time.perf_counter()
                driver.get(base + path)
                content = time.perf_counter() - started + _wait(driver, ready)
                paints = dict(driver.execute_script(PAINT))
                samples.append({"first_paint_ms": round(paints.get("first-paint", float("nan")), 1),
                                "first_contentful_paint_ms": round(paints.get("first-contentful-paint", float("nan")), 1),
                                "content_ready_ms": round(content * 1000, 1)})
            out[f"page {path}"] = {k: max(s[k] for s in samples) for k in samples[0]} | {"runs": len(samples), "stat": "max of 3"}
    finally:
        driver.quit()
        server.shutdown()
    return out


def bench_zoom_callback(big_root: Path, cache: Path, budget: int, repeats: int) -> dict[str, Any]:
    """Server side of a zoom on the big scatter: the ``relayoutData`` callback over HTTP (ms)."""
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    app = create_app(big_root, cache_dir=cache, scatter_budget=budget)
    client = app.server.test_client()
    client.get("/")
    state = {"run": "points"}
    site = "blocks.0.resid_out.img"
    key = _key(app, "latents-scatter.figure", "latents-relayout.data")
    scatter_key = _key(app, "latents-scatter.figure", "latents-site.value")
    client.post("/_dash-update-component", json=_payload(app, scatter_key, [site, 0, "pca", "color"], [state]))  # PCA, cached
    times, sizes, shown = [], [], []
    for r in range(repeats):
        f = 0.5 ** (r % 4)  # full extent, then windows of 1/2, 1/4, 1/8 around the centre
        rel = {"xaxis.range[0]": -4 * f, "xaxis.range[1]": 4 * f, "yaxis.range[0]": -4 * f, "yaxis.range[1]": 4 * f + r * 1e-6}
        st = [site, 0, "pca", "color", state, None]
        started = time.perf_counter()
        response = client.post("/_dash-update-component", json=_payload(app, key, [rel], st))
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200 or b"ll-message ll-error" in response.data:
            raise RuntimeError(f"zoom callback: HTTP {response.status_code}: {response.data[:300]!r}")
        sizes.append(len(response.data))
        fig = json.loads(response.data)["response"]["latents-scatter"]["figure"]
        shown.append(fig["layout"]["meta"]["shown"])
    return {**percentiles(times), "bytes_max": max(sizes), "points_sent_max": max(shown)}


def bench_scatter(big_root: Path, cache: Path, points: int, interactions: int, budget: int) -> dict[str, Any]:
    """The ``points``-point scatter in Chromium with ``budget`` (0: every point drawn, the old behaviour)."""
    base, server = _serve(big_root, cache, scatter_budget=budget)
    driver = _driver()
    try:
        driver.set_script_timeout(60)
        driver.get(base + "/latents")
        render = _wait(driver, SCATTER_READY, timeout=180)
        drawn = int(driver.execute_script(SCATTER_READY))
        timings: dict[str, list[float]] = {"zoom": [], "pan": [], "legend toggle": []}
        moved: dict[str, list[float]] = {"zoom": [], "pan": []}
        first: dict[str, float] = {}
        for k in range(interactions + 1):  # the first zoom and pan are reported apart (one-off warm-up)
            for kind, label in (("zoom", "zoom"), ("pan", "pan"), ("toggle", "legend toggle")):
                view, total = driver.execute_async_script(TIMED, kind, k, budget > 0)
                if total < 0:
                    raise TimeoutError(f"{label} {k}: the points of the new view never arrived")
                if k == 0:
                    first[label] = round(float(total), 1)
                    continue
                timings[label].append(float(total))
                if label in moved and view is not None:
                    moved[label].append(float(view))
        logs = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        return {
            "budget": budget, "points_drawn_at_first_render": drawn,
            "time_to_render_ms": round(render * 1000, 1),
            **{label: percentiles(values) for label, values in timings.items()},
            **{f"{label}: view moved": percentiles(values) for label, values in moved.items() if values},
            "first interaction ms": first,
            "console_errors": len(logs),
        }
    finally:
        driver.quit()
        server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10_000, help="samples of the callback run (default 10,000)")
    parser.add_argument("--points", type=int, default=100_000, help="points of the big scatter (default 100,000)")
    parser.add_argument("--repeats", type=int, default=5, help="calls per callback and step")
    parser.add_argument("--interactions", type=int, default=10, help="zooms, pans and toggles each")
    parser.add_argument("--budgets", default=f"0,{DEFAULT_BUDGET}",
                        help="comma-separated point budgets of the big scatter; 0 = every point drawn (the old "
                             f"behaviour, the baseline). Default 0,{DEFAULT_BUDGET}")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from dashboards.synthetic import make_scatter_run, make_synthetic_run

    workdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    steps = 4
    started = time.perf_counter()
    make_synthetic_run(workdir / "runs" / "big", n_samples=args.samples, blocks=3, steps=steps, channels=32,
                       img_tokens=16, txt_tokens=8, images=200)
    make_scatter_run(workdir / "scatter" / "points", args.points)  # colour clusters in 8 channels, no images
    setup_s = time.perf_counter() - started
    print(f"synthetic runs written in {setup_s:.1f} s under {workdir}", file=sys.stderr)

    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start",
        "samples": args.samples, "points": args.points,
        "callbacks": bench_callbacks(workdir / "runs", "big", "blocks.2.resid_out.img", steps, args.repeats),
    }
    if not args.no_browser and os.path.exists(CHROMIUM):
        result["browser"] = bench_pages(workdir / "runs", workdir / "cache")
    budgets = [int(b) for b in args.budgets.split(",")]
    result["zoom callback"] = {str(b): bench_zoom_callback(workdir / "scatter", workdir / "cache", b, 4 * args.repeats)
                               for b in budgets if b > 0}
    if not args.no_browser and os.path.exists(CHROMIUM):
        for budget in budgets:
            name = f"scatter {args.points} points, " + ("all drawn (old)" if budget == 0 else f"budget {budget}")
            print(f"{name} …", file=sys.stderr)
            result["browser"][name] = bench_scatter(workdir / "scatter", workdir / "cache", args.points,
                                                    args.interactions, budget)
    result["load average at end"] = round(os.getloadavg()[0], 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"\n{result['machine']}; load average {result['load average at end']} at the end")
    print(f"server callbacks over HTTP, {args.samples}-sample run (ms):")
    print(f"  {'callback':28s} {'p50':>7s} {'p95':>7s} {'max':>7s} {'cold p95':>9s} {'warm p95':>9s} {'bytes':>9s}")
    for name, row in result["callbacks"].items():
        a = row["all"]
        print(f"  {name:28s} {a['p50_ms']:7.1f} {a['p95_ms']:7.1f} {a['max_ms']:7.1f} "
              f"{row['cold']['p95_ms']:9.1f} {row['warm']['p95_ms']:9.1f} {row['bytes']:9d}")
    for budget, row in result["zoom callback"].items():
        print(f"zoom callback on {args.points} points, budget {budget}: {json.dumps(row)}")
    for name, row in result.get("browser", {}).items():
        print(f"{name}: {json.dumps(row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
