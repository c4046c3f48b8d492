"""`qllm-bench executor=sim`: runs end to end on virtual time without building a model's weights,
refuses what it cannot do with one line naming both ways out, and sweeps like the real executor."""

from __future__ import annotations

import pandas as pd
import pytest

import qllm.modeling.models
from tests.helpers import TINY_SWEEP, run_cli

SIM = ("executor=sim", "hardware=a100_80gb", "engine=[qllm,fcfs_rtc]", "trace.num_requests=40")


def test_a_simulated_run_goes_end_to_end_without_weights(run_app, monkeypatch):
    def no_weights(**_):
        raise AssertionError("the simulator built the model's weights")

    monkeypatch.setattr(qllm.modeling.models, "load_model", no_weights)
    tables = run_app(*SIM, "model=mixtral_8x7b_4bit", "slo=paper")
    requests, timeline, summary = tables["requests"], tables["timeline"], tables["summary"]
    assert (requests["status"] == "finished").all() and set(requests["engine"]) == {"qllm", "fcfs_rtc"}
    assert timeline.groupby("engine")["t_end_s"].max().min() > 1.0  # seconds of Mixtral-8x7B work, simulated instantly
    ls = summary[(summary["priority_class"] == "LS")].set_index("engine")["ttft_s_p50"]
    assert ls["qllm"] < ls["fcfs_rtc"]
    assert requests.loc[requests["engine"] == "qllm", "preemptions"].sum() > 0


@pytest.mark.parametrize("overrides, named", [
    (("engine=[qllm,hf_generate]",), ("hf_generate", "executor=real", "engine=[")),
    (("engine=[qllm]", "record_token_ids=true"), ("record_token_ids", "executor=real")),
])  # fmt: skip
def test_what_the_simulator_cannot_do_is_refused_in_one_line(overrides, named, tmp_path):
    done = run_cli("executor=sim", *overrides, f"hydra.run.dir={tmp_path}", expect_ok=False)
    assert done.returncode != 0 and all(name in done.stderr for name in named), done.stderr
    assert not (tmp_path / "requests.parquet").exists()


def test_a_simulated_sweep_runs_and_is_gathered(tmp_path):
    run_cli("-m", *TINY_SWEEP, "executor=sim", "hardware=a100_80gb", "trace.rate=20,40", f"hydra.sweep.dir={tmp_path}")
    summary = pd.read_parquet(tmp_path / "sweep_summary.parquet")
    assert sorted(summary["rate"].unique()) == [20, 40] and set(summary["engine"]) == {"qllm", "fcfs_rtc"}


@pytest.mark.parametrize("model", ["deepseek_v2_lite", "gpt_oss_20b", "qwen3_30b_a3b", "tiny_deepseek_v3", "tiny_gpt_oss"])
def test_families_of_the_generic_adapter_simulate_end_to_end(run_app, monkeypatch, model):
    """ModelShape builds each family's shape through the generic adapter on the meta device; the
    analytic A100 model costs it (latent attention's narrower KV, gpt-oss's sinks and windows)."""
    monkeypatch.setattr(qllm.modeling.models, "load_model", lambda **_: pytest.fail("the simulator built weights"))
    tables = run_app(*SIM, f"model={model}", "trace.num_requests=20")
    requests, timeline = tables["requests"], tables["timeline"]
    assert (requests["status"] == "finished").all()
    assert timeline["t_end_s"].max() > 0 and requests.loc[requests["engine"] == "qllm", "preemptions"].sum() > 0


def test_the_filling_passes_benchmark_sets_each_variant_against_the_baseline(capsys):
    from benchmarks import filling_passes

    ratio = filling_passes.main(["--requests", "24", "--batch", "4", "--rates", "4"])
    assert set(ratio.index.get_level_values("variant")) == {"fcfs_rtc", *filling_passes.VARIANTS}
    assert ratio.xs("fcfs_rtc", level="variant").eq(1.0).all() and (ratio > 0.5).all()
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed and "qllm+merge" in printed and "lowest over the rates" in printed
