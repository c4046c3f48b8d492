"""The analysis notebooks execute end to end on a tiny sweep of a real experiment preset, and what
they show comes from the sweep's own table."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from harness.results.figures import CLASS_LABELS, ENGINE_LABELS
from harness.traces.workload import PROJECT_ROOT
from tests.helpers import TINY_SWEEP, run_cli

NOTEBOOKS = PROJECT_ROOT / "notebooks"
# Run in the notebook's kernel before its own cells: every figure and table it displays carries,
# beside its picture, what it shows as JSON (a figure's plotted lines, a table's cells), so the test
# reads what the executed notebook displayed rather than redrawing it.
SHOW_AS_JSON_CELL = """
import pandas as _pd
from matplotlib.figure import Figure as _Figure
from harness.results.figures import plotted_lines as _plotted_lines

def _show_as_json(*_):  # again after each cell: `%matplotlib inline` drops every formatter of Figure
    _json = get_ipython().display_formatter.formatters["application/json"]
    _json.for_type(_Figure, lambda fig: {"lines": {f"{panel}|{label}": [list(map(float, xs)), list(map(float, ys))]
                                                for (panel, label), (xs, ys) in _plotted_lines(fig).items()}})
    _json.for_type(_pd.DataFrame, lambda df: {"table": df.astype(str).to_dict()})


_show_as_json()
get_ipython().events.register("post_run_cell", _show_as_json)
"""


def displayed(notebook, kind: str) -> list[dict]:
    """What the executed notebook displayed of one kind ("lines" of a figure, "table" cells), in order."""
    shown = [o["data"].get("application/json", {}) for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.outputs if o.output_type == "display_data"]  # fmt: skip
    return [item[kind] for item in shown if kind in item]


@pytest.fixture(scope="module")
def tiny_rate_sweep(tmp_path_factory) -> Path:
    """`experiment=ttft_vs_rate` shrunk to QLLM and the FCFS baseline, 6 requests, 2 rates."""
    sweep = tmp_path_factory.mktemp("notebook_results") / "ttft_vs_rate"
    run_cli("-m", "experiment=ttft_vs_rate", *TINY_SWEEP, "trace.rate=20,40", f"hydra.sweep.dir={sweep}")
    return sweep


@pytest.mark.slow
@pytest.mark.parametrize("name", ["compare_baselines", "reproduce_paper"])
def test_notebook_executes_and_shows_the_sweeps_own_numbers(tiny_rate_sweep, tmp_path, monkeypatch, name):
    monkeypatch.setenv("QLLM_RESULTS_DIR", str(tiny_rate_sweep))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(SHOW_AS_JSON_CELL))
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # the figures were drawn
    assert any(str(tiny_rate_sweep) in o.get("text", "") for o in outputs)  # it read the tiny sweep, not results/

    table = pd.read_parquet(tiny_rate_sweep / "sweep_summary.parquet")  # what the sweep's gather wrote
    point = lambda metric, cls: table[table["priority_class"] == cls].pivot_table(  # noqa: E731
        index="rate", columns="engine", values=metric)
    ls = point("ttft_s_mean", "LS")
    ttft_figure = displayed(notebook, "lines")[0]  # both notebooks show LS TTFT against the rate first
    for engine in ("qllm", "fcfs_rtc"):
        x, y = ttft_figure[f"{CLASS_LABELS['LS']}|{ENGINE_LABELS[engine]}"]
        np.testing.assert_allclose(x, ls.index.to_numpy(float))
        np.testing.assert_allclose(y, ls[engine].to_numpy(float))
    if name == "reproduce_paper":
        assert displayed(notebook, "table")[-1]["ours"] == expected_claims(point)


def expected_claims(point) -> dict[str, str]:
    """reproduce_paper's "ours" column, computed here from the sweep's table: every value it reports."""
    ttft = point("ttft_s_mean", "LS")["fcfs_rtc"] / point("ttft_s_mean", "LS")["qllm"]
    turnaround = point("e2e_s_mean", "LS")["fcfs_rtc"] / point("e2e_s_mean", "LS")["qllm"]
    throughput = point("throughput_tok_s", "all")["qllm"] / point("throughput_tok_s", "all")["fcfs_rtc"]

    def meets_up_to(engine: str) -> str:
        attained = point("slo_attainment", "LS")[engine].sort_index()
        meeting = attained.index[: int((attained >= 0.9).cummin().sum())]  # the points before the first miss
        return f"{meeting.max():g} req/s (the paper's {meeting.max() / 6:.3g})" if len(meeting) else "not met at any point"

    return {
        "LS TTFT lower, on average": f"{ttft.mean():.1f}x", "LS TTFT lower, at most": f"{ttft.max():.1f}x",
        "qllm meets the LS SLO up to": meets_up_to("qllm"), "fcfs_rtc meets the LS SLO up to": meets_up_to("fcfs_rtc"),
        "LS turnaround lower, at most": f"{turnaround.max():.1f}x",
        "throughput, QLLM / baseline, lowest": f"{throughput.min():.2f}",
        "throughput, QLLM / baseline, mean": f"{throughput.mean():.2f}",
    }  # fmt: skip
