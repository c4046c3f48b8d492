"""report.html in a real browser: `qllm-bench` (simulated and real) and a gathered sweep write a
page that loads from disk with no console error, draws its figures, lists every engine and class,
filters its request table, and shows the numbers of summary.parquet.

The browser is Debian's `chromium` (`apt-get install chromium`; .ci/run installs it), driven by
Playwright through its executable path (never `playwright install`); without one the tests skip.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.results.report import REPORT_FILE
from tests.helpers import TINY_SWEEP, run_cli

SIM_RUN = ("executor=sim", "hardware=a100_80gb", "engine=[qllm,fcfs_rtc,priority_cb]", "trace.num_requests=60",
           "trace.ls_fraction=0.3", "trace.rate=40", "progress=false")  # fmt: skip
SIMULATED_RED = "rgb(178, 24, 43)"
PANE_ENTRY = "div.dtsp-searchPane:has(input[placeholder='{column}']) tbody tr"
# Every comparison table row as {run, engine, class, header, cells: [{column, value, text}]}.
READ_TABLES = """() => [...document.querySelectorAll('table.comparison tbody tr')].map(tr => ({
    run: tr.closest('table').dataset.run, engine: tr.dataset.engine, cls: tr.dataset.class,
    header: [...tr.closest('table').querySelectorAll('thead th')].map(th => th.textContent.trim()),
    cells: [...tr.querySelectorAll('td[data-column]')].map(td => ({
        column: td.dataset.column, value: td.dataset.value, text: td.textContent.trim(), index: td.cellIndex}))}))"""


def chromium_path() -> str | None:
    return os.environ.get("QLLM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    if chromium_path() is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set QLLM_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield browser
        browser.close()


def open_report(browser, path: Path):
    """The page loaded from disk, once its request table is drawn; and the console errors it logged."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("table#requests.dataTable", timeout=60_000)
    page.wait_for_selector("body[data-plotted]", timeout=60_000)  # every figure drawn
    return page, errors


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("sim_run")
    run_cli(*SIM_RUN, f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("real_sweep")
    run_cli("-m", *TINY_SWEEP, "trace.rate=20,40", f"hydra.sweep.dir={sweep_dir}")
    return sweep_dir


def shown_value(text: str, header: str, column: str) -> tuple[float, float]:
    """A cell's text back in the summary's units (seconds, shares), and half its last digit's worth."""
    if text == "-":
        return math.nan, 0.0
    scale = 1e-3 if header.endswith("(ms)") else 0.01 if column == "slo_attainment" else 1.0
    decimals = len(text.partition(".")[2])
    return float(text) * scale, 0.5001 * 10.0**-decimals * scale


def assert_page_matches(page, summary: pd.DataFrame) -> None:
    """Every summary row is a table row, each number shown equal to the parquet's (exact behind the text)."""
    rows = page.evaluate(READ_TABLES)
    assert len(rows) == len(summary)
    by_key = summary.set_index(["run_dir", "engine", "priority_class"])
    for row in rows:
        expected = by_key.loc[(row["run"], row["engine"], row["cls"])]
        assert len(row["cells"]) > 10
        for cell in row["cells"]:
            want = float(expected[cell["column"]])
            assert (math.isnan(want) and cell["value"] == "nan") or float(cell["value"]) == want, (row, cell)
            shown, rounding = shown_value(cell["text"], row["header"][cell["index"]], cell["column"])
            assert (math.isnan(want) and math.isnan(shown)) or shown == pytest.approx(want, rel=0, abs=rounding), cell


def pane_counts(page, column: str) -> dict[str, int]:
    """A search pane's entries: value -> count shown."""
    entries = page.locator(PANE_ENTRY.format(column=column))
    return {entries.nth(i).locator(".dtsp-name").inner_text(): int(entries.nth(i).locator(".dtsp-pill").inner_text())
            for i in range(entries.count())}  # fmt: skip


def test_a_simulated_run_writes_a_page_that_shows_its_tables_and_figures(sim_run, browser, tmp_path):
    page, errors = open_report(browser, sim_run / REPORT_FILE)
    assert errors == []
    banner = page.locator("#simulated")
    assert "SIMULATED" in banner.inner_text() and "a100_80gb" in banner.inner_text()
    assert banner.evaluate("e => getComputedStyle(e).color") == SIMULATED_RED

    summary = pd.read_parquet(sim_run / "summary.parquet").assign(run_dir=".")
    assert_page_matches(page, summary)

    requests = pd.read_parquet(sim_run / "requests.parquet")
    assert pane_counts(page, "engine") == requests["engine"].value_counts().to_dict()
    assert pane_counts(page, "priority_class") == requests["priority_class"].value_counts().to_dict()
    assert f"of {len(requests)} entries" in page.locator(".dt-info").inner_text()
    page.locator(PANE_ENTRY.format(column="priority_class")).filter(has_text="LS").click()  # filter to LS
    n_ls = int((requests["priority_class"] == "LS").sum())
    page.wait_for_function(f"document.querySelector('.dt-info').textContent.includes('of {n_ls} entries')")

    plots = page.locator(".js-plotly-plot")
    assert plots.count() == 3  # latency bars, TTFT CDF, timeline
    for i in range(plots.count()):
        assert plots.nth(i).locator("svg.main-svg g.trace").count() > 0  # plotly drew the data
    assert page.locator("[id$='-timeline'] .updatemenu-container").count() == 1  # the engine menu
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 0


def test_a_gathered_sweep_of_real_runs_has_its_figures_on_top_and_a_section_per_point(real_sweep, browser):
    page, errors = open_report(browser, real_sweep / REPORT_FILE)
    assert errors == []
    assert page.locator("#simulated").count() == 0  # measured, not simulated
    summary = pd.read_parquet(real_sweep / "sweep_summary.parquet")
    assert_page_matches(page, summary)
    assert page.locator("#sweep + .figures .js-plotly-plot").count() == 3  # TTFT, SLO, throughput vs rate
    points = sorted(summary["run_dir"].unique())
    assert page.locator("table.comparison").count() == len(points) == 2
    rows = {point: len(pd.read_parquet(real_sweep / point / "requests.parquet")) for point in points}
    assert pane_counts(page, "point") == rows


def test_report_false_writes_no_page_and_qllm_report_writes_it_again(tmp_path):
    run_cli(*SIM_RUN, "report=false", f"hydra.run.dir={tmp_path}")
    assert (tmp_path / "summary.parquet").is_file() and not (tmp_path / REPORT_FILE).exists()
    run_cli(str(tmp_path), "--no-figures", module="harness.results.gather")
    assert (tmp_path / REPORT_FILE).is_file()
