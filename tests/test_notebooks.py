"""The analysis notebooks execute end to end on a tiny sweep of a real experiment preset."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from harness.workload import PROJECT_ROOT
from tests.helpers import TINY_SWEEP, run_cli

NOTEBOOKS = PROJECT_ROOT / "notebooks"


@pytest.fixture(scope="module")
def tiny_rate_sweep(tmp_path_factory) -> Path:
    """`experiment=ttft_vs_rate` shrunk to QLLM and the FCFS baseline, 6 requests, 2 rates."""
    sweep = tmp_path_factory.mktemp("notebook_results") / "ttft_vs_rate"
    run_cli("-m", "experiment=ttft_vs_rate", *TINY_SWEEP, "trace.rate=20,40", f"hydra.sweep.dir={sweep}")
    return sweep


@pytest.mark.slow
@pytest.mark.parametrize("name", ["compare_baselines", "reproduce_paper"])
def test_notebook_executes(tiny_rate_sweep, monkeypatch, name):
    monkeypatch.setenv("QLLM_RESULTS_DIR", str(tiny_rate_sweep))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # the figures were drawn
    assert any(str(tiny_rate_sweep) in o.get("text", "") for o in outputs)  # it read the tiny sweep, not results/
