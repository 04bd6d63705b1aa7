"""Controls a user reads and drives, in real headless Chromium on the toy run (``toy_run.py``):
the cosine matrix per site and stream with every label readable, the attention page's step box,
and long jobs that disable their control while they run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dashboards import ids
from tests.browser import toy_run
from tests.browser.conftest import save_screenshot

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture()
def app(toy_root: Path):
    from dashboards.app import create_app
    from dashboards.data import clear_caches

    clear_caches()
    return create_app(toy_root, edit_steps=toy_run.STEPS, cache_dir=toy_root.parent / "cache")


def _no_console_errors(dash_duo, where: str) -> None:
    logs = [entry for entry in dash_duo.get_logs() if "favicon" not in entry.get("message", "")]
    assert logs == [], f"console errors on {where}: {logs}"


def _wait_until(check, what: str, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# The matrix as drawn: its rows, the tick labels plotly kept, their boxes and the plot's box.
MATRIX = """
const gd = document.querySelector('#directions-cosine .js-plotly-plot');
if (!(gd && gd._fullData && gd._fullData.length && gd._fullData[0].type === 'heatmap')) return null;
const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const ticks = axis => Array.from(gd.querySelectorAll('.' + axis + 'tick text'))
    .filter(t => t.getAttribute('visibility') !== 'hidden' && t.textContent);
return {names: Array.from(gd._fullData[0].y), title: gd._fullLayout.title.text,
        y: ticks('y').map(t => t.textContent), x: ticks('x').map(t => t.textContent),
        ybox: ticks('y').map(box), xbox: ticks('x').map(box), page: box(gd)};
"""


def _readable(drawn: dict) -> None:
    """Every row and column is labelled, no two labels overlap and none is cut off."""
    assert drawn["y"] == drawn["names"] and drawn["x"] == drawn["names"], drawn
    left, top, right, bottom = drawn["page"]
    for boxes in (drawn["ybox"], drawn["xbox"]):
        for x0, y0, x1, y1 in boxes:
            assert left - 0.5 <= x0 and x1 <= right + 0.5 and top - 0.5 <= y0 and y1 <= bottom + 0.5, (
                boxes,
                drawn["page"],
            )
    rows = sorted(drawn["ybox"], key=lambda b: b[1])
    for above, below in zip(rows, rows[1:]):
        assert above[3] <= below[1] + 0.5, f"y labels overlap: {above} {below}"
    columns = sorted(drawn["xbox"], key=lambda b: b[2])  # rotated labels end at their anchors, which step right
    for first, second in zip(columns, columns[1:]):
        assert second[2] - first[2] >= 10, f"x labels crowd each other: {first} {second}"


def test_cosine_matrix_compares_one_site_and_stream_and_labels_every_row(dash_duo, app, toy_root):
    import latentlens

    res = latentlens.load_results(toy_root / "shapes")
    by_group: dict[str, list[str]] = {}
    for name in res.direction_names:
        d = res.load_direction(name)
        key = d.site if d.token_rows is None else f"{d.site} · token-wise ×{d.token_rows}"
        by_group.setdefault(key, []).append(name)
    assert len(by_group) > 2  # the toy run's directions live at several sites and both streams

    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/directions")
    dash_duo.wait_for_element("#directions-cosine .heatmaplayer", timeout=30)
    # opens at the group of the chosen (first) direction
    first = res.direction_names[0]
    group = next(k for k, names in by_group.items() if first in names)
    drawn = _wait_until(lambda: dash_duo.driver.execute_script(MATRIX), "the cosine matrix")
    assert drawn["names"] == by_group[group] and group in drawn["title"], drawn
    _readable(drawn)

    # the largest group: every label still readable
    biggest = max(by_group, key=lambda k: len(by_group[k]))
    assert len(by_group[biggest]) >= 12
    label = _choose(dash_duo, f"#{ids.DIR_COSINE_SITE}", biggest)
    drawn = _wait_until(
        lambda: (d := dash_duo.driver.execute_script(MATRIX)) and d["names"] == by_group[biggest] and d,
        f"the matrix of {biggest}",
    )
    stream = "text stream" if biggest.split(" ")[0].endswith(".txt") else "image stream"
    assert biggest in drawn["title"] and stream in drawn["title"] and stream in label
    _readable(drawn)
    diagonal = dash_duo.driver.execute_script(
        "const z = document.querySelector('#directions-cosine .js-plotly-plot')._fullData[0].z;"
        "return z.map((row, i) => row[i]);"
    )
    assert all(abs(v - 1) < 1e-3 for v in diagonal)
    _no_console_errors(dash_duo, "/directions cosine")
    dash_duo.driver.execute_script("document.querySelector('#directions-cosine').scrollIntoView();")
    save_screenshot(dash_duo.driver, "dashboard-directions-cosine", docs=False)


def _choose(dash_duo, selector: str, search: str) -> str:
    """Open a dcc.Dropdown, type ``search`` in its search box and click the first option left; its label."""
    dash_duo.find_element(selector).click()
    box = dash_duo.wait_for_element(".dash-dropdown-search", timeout=10)
    box.send_keys(search)
    option = _wait_until(
        lambda: next((o for o in dash_duo.find_elements(".dash-dropdown-option") if search in o.text), None),
        f"an option with {search!r}",
    )
    label = option.text
    option.click()
    return label


def _step_state(dash_duo) -> dict:
    return dash_duo.driver.execute_script(
        """
        const box = document.querySelector('#attention-step-box');
        const handle = document.querySelector('#attention-step [role="slider"]');
        const title = document.querySelector('#attention-figure .gtitle');
        return {box: box && box.value, min: box && box.min, max: box && box.max,
                slider: handle && handle.getAttribute('aria-valuenow'), title: title && title.textContent};
        """
    )


def _type_step(dash_duo, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = dash_duo.find_element(f"#{ids.ATT_STEP_BOX}")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(value + "\n")


def test_attention_step_box_is_bounded_to_the_recorded_steps_and_follows_the_slider(dash_duo, app):
    first, last = toy_run.RECORDED[0], toy_run.RECORDED[-1]
    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/attention")
    dash_duo.wait_for_element("#attention-strip img", timeout=30)
    state = _wait_until(lambda: (s := _step_state(dash_duo)) and s["title"] and s, "the attention figure")
    assert (state["min"], state["max"], state["box"], state["slider"]) == (str(first), str(last), str(last), str(last))
    assert f"step {last}" in state["title"]

    # a recorded step typed in the box moves the slider and the figure
    _type_step(dash_duo, str(toy_run.RECORDED[1]))
    state = _wait_until(
        lambda: (
            (s := _step_state(dash_duo))
            and s["slider"] == str(toy_run.RECORDED[1])
            and s["title"]
            and f"step {toy_run.RECORDED[1]}" in s["title"]
            and s
        ),
        "the slider to follow the box",
    )
    assert state["box"] == str(toy_run.RECORDED[1])
    # a step that was not recorded goes to the nearest recorded one, and the box says so
    between = toy_run.RECORDED[2] - 1  # 4: nearer to 5 than to 2
    _type_step(dash_duo, str(between))
    _wait_until(
        lambda: (
            (s := _step_state(dash_duo))
            and s["slider"] == s["box"] == str(toy_run.RECORDED[2])
            and f"step {toy_run.RECORDED[2]}" in (s["title"] or "")
        ),
        "the nearest recorded step",
    )
    # outside the recorded range: a message, nothing moves
    _type_step(dash_duo, str(last + 50))
    dash_duo.wait_for_contains_text(f"#{ids.ATT_MESSAGE}", f"between {first} and {last}", timeout=20)
    assert _step_state(dash_duo)["slider"] == str(toy_run.RECORDED[2])
    # the slider fills the box: press Home on the slider handle (its first step)
    from selenium.webdriver.common.keys import Keys

    dash_duo.find_element('#attention-step [role="slider"]').send_keys(Keys.HOME)
    _wait_until(
        lambda: (
            (s := _step_state(dash_duo))
            and s["slider"] == s["box"] == str(first)
            and f"step {first}" in (s["title"] or "")
        ),
        "the box to follow the slider",
    )
    assert dash_duo.find_element(f"#{ids.ATT_MESSAGE}").text == ""  # the figure redrawn clears the message
    _no_console_errors(dash_duo, "/attention step box")
    save_screenshot(dash_duo.driver, "dashboard-attention-step-box", docs=False)


# Every value the run button's `disabled` attribute and label take, in order (a job may end before a poll sees it).
WATCH_RUN = """
const button = document.querySelector('#editor-run');
window.llRunHistory = [[button.disabled, button.textContent]];
new MutationObserver(() => {
    const last = window.llRunHistory[window.llRunHistory.length - 1];
    const now = [button.disabled, button.textContent];
    if (now[0] !== last[0] || now[1] !== last[1]) window.llRunHistory.push(now);
}).observe(button, {attributes: true, childList: true, characterData: true, subtree: true});
"""


def _run_history(dash_duo) -> list:
    return dash_duo.driver.execute_script("return window.llRunHistory;")


def test_a_running_edit_disables_its_run_button_until_it_ends_also_on_error(dash_duo, app):
    from dashboards.pages.editor import RUN_LABEL, RUNNING_LABEL

    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/editor")
    dash_duo.wait_for_element("#editor-source-image", timeout=30)
    dash_duo.wait_for_contains_text(f"#{ids.ED_DIRECTION}", "/", timeout=20)  # a direction is chosen
    dash_duo.driver.execute_script(WATCH_RUN)
    dash_duo.find_element(f"#{ids.ED_RUN}").click()
    _wait_until(lambda: [True, RUNNING_LABEL] in _run_history(dash_duo), "the run button to be disabled while it runs")
    assert dash_duo.find_element(f"#{ids.ED_CANCEL}").is_enabled() or dash_duo.find_elements("#editor-after-0")
    dash_duo.wait_for_element("#editor-after-0", timeout=120)
    _wait_until(lambda: dash_duo.find_element(f"#{ids.ED_RUN}").is_enabled(), "the run button to come back")
    history = _run_history(dash_duo)
    assert history[0] == [False, RUN_LABEL] and [True, RUNNING_LABEL] in history and history[-1] == [False, RUN_LABEL]
    assert not dash_duo.find_element(f"#{ids.ED_CANCEL}").is_enabled()

    # an edit that fails (an upload source without an upload): disabled while it runs, back after the error
    dash_duo.find_element("#editor-source-kind input[value='upload']").click()
    dash_duo.driver.execute_script(WATCH_RUN)
    dash_duo.find_element(f"#{ids.ED_RUN}").click()
    dash_duo.wait_for_contains_text(f"#{ids.ED_MESSAGE}", "Upload an image first", timeout=60)
    _wait_until(lambda: dash_duo.find_element(f"#{ids.ED_RUN}").is_enabled(), "the run button after the error")
    history = _run_history(dash_duo)
    assert [True, RUNNING_LABEL] in history and history[-1] == [False, RUN_LABEL], history
    _no_console_errors(dash_duo, "/editor running state")


def test_a_server_at_its_job_cap_disables_the_run_button_until_a_slot_is_free(dash_duo, app):
    from dashboards import config
    from dashboards.limits import MAX_EDIT_JOBS, JobSlots
    from dashboards.pages.editor import BUSY_LABEL, RUN_LABEL

    dash_duo.start_server(app)
    dash_duo.driver.get(dash_duo.server_url + "/editor")
    dash_duo.wait_for_element("#editor-source-image", timeout=30)
    dash_duo.wait_for_contains_text(f"#{ids.ED_DIRECTION}", "/", timeout=20)
    slots = JobSlots(Path(config.setting("upload_dir")).parent / "job-slots", MAX_EDIT_JOBS)
    with slots.take() as first, slots.take() as second:  # two edits of other users hold the slots
        assert first is not None and second is not None
        dash_duo.find_element(f"#{ids.ED_RUN}").click()
        dash_duo.wait_for_contains_text(f"#{ids.ED_MESSAGE}", "The editor is busy", timeout=60)
        button = dash_duo.find_element(f"#{ids.ED_RUN}")
        _wait_until(lambda: not button.is_enabled() and button.text == BUSY_LABEL, "the busy state")
        time.sleep(2.5)  # several polls later: still busy, still disabled
        assert not button.is_enabled() and button.text == BUSY_LABEL
        save_screenshot(dash_duo.driver, "dashboard-editor-busy", docs=False)
    _wait_until(lambda: button.is_enabled() and button.text == RUN_LABEL, "the run button once a slot is free", 15)
    dash_duo.wait_for_contains_text(f"#{ids.ED_MESSAGE}", "slot is free", timeout=10)
    _no_console_errors(dash_duo, "/editor busy state")
