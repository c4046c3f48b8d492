"""The analysis notebooks execute end to end on a tiny sweep of a real experiment preset, and what
they show comes from the sweep's own table."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from harness.figures import CLASS_LABELS, ENGINE_LABELS
from harness.workload import PROJECT_ROOT
from tests.helpers import TINY_SWEEP, run_cli

NOTEBOOKS = PROJECT_ROOT / "notebooks"
# Run in the notebook's kernel after its own cells: what it computed and plotted, as JSON.
REPORT_CELL = """
import json
_figure = figures.ttft_vs_x_figure(summary, x, slo_s=slo_s)
_series = {f"{panel}|{label}": [list(map(float, xs)), list(map(float, ys))]
           for (panel, label), (xs, ys) in figures.plotted_lines(_figure).items()}
_ours = {key: (None if value is None else float(value)) for key, value in globals().get("ours", {}).items()}
json.dump({"series": _series, "ours": _ours, "x": x}, open({path!r}, "w"))
"""


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
    report = tmp_path / "report.json"
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT_CELL.replace("{path!r}", repr(str(report)))))
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # the figures were drawn
    assert any(str(tiny_rate_sweep) in o.get("text", "") for o in outputs)  # it read the tiny sweep, not results/

    shown = json.loads(report.read_text())
    table = pd.read_parquet(tiny_rate_sweep / "sweep_summary.parquet")  # what the sweep's gather wrote
    ls = table[table["priority_class"] == "LS"].pivot_table(index="rate", columns="engine", values="ttft_s_mean")
    for engine in ("qllm", "fcfs_rtc"):
        x, y = shown["series"][f"{CLASS_LABELS['LS']}|{ENGINE_LABELS[engine]}"]
        np.testing.assert_allclose(x, ls.index.to_numpy(float))
        np.testing.assert_allclose(y, ls[engine].to_numpy(float))
    if name == "reproduce_paper":
        ratio = ls["fcfs_rtc"] / ls["qllm"]
        assert shown["ours"]["LS TTFT lower, on average"] == pytest.approx(ratio.mean())
        assert shown["ours"]["LS TTFT lower, at most"] == pytest.approx(ratio.max())
