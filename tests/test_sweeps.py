"""Sweeps: the gather callback, `qllm-report`, rerunning a sweep, the launcher configs, and a sweep
through a real local Ray instance."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.results import gather
from harness.results.run_dir import is_complete
from harness.sweep_dirs import point_dirname
from harness.traces.workload import PROJECT_ROOT
from harness.app import CONF_DIR, compose_config
from tests.helpers import TINY_SWEEP, run_cli

# The launcher plugins' own config names, and the plugin module each needs (joblib and ray come with
# the test extra; the Slurm one is optional).
PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
           "ray": "hydra_plugins.hydra_ray_launcher"}  # fmt: skip


def has_plugin(name: str) -> bool:
    return importlib.util.find_spec(PLUGINS[name]) is not None


@pytest.mark.slow
def test_sweep_is_gathered_and_a_rerun_redoes_only_the_unfinished_point(tmp_path):
    sweep = tmp_path / "sweep"
    sweep_args = ["-m", *TINY_SWEEP, "trace.rate=20,40", f"hydra.sweep.dir={sweep}"]
    run_cli(*sweep_args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")  # two points in parallel

    jobs = gather.find_complete_runs(sweep)
    assert len(jobs) == 2 and "trace.rate=20" in jobs[0].name and "trace.rate=40" in jobs[1].name
    summary = pd.read_parquet(sweep / "sweep_summary.parquet")
    assert len(summary) == 2 * 2 * 3  # rates x engines x (LS, BE, all)
    assert sorted(summary["rate"].unique()) == [20, 40] and set(summary["engine"]) == {"qllm", "fcfs_rtc"}
    assert summary.loc[0, ["num_hidden_layers", "num_requests", "max_output_len"]].tolist() == [1, 6, 3]
    assert list(summary.columns).index("num_requests") < list(summary.columns).index("priority_class")
    for name in ("ttft_vs_rate", "slo_vs_rate", "throughput_vs_rate", "turnaround", "ttft_cdf", "timeline"):
        assert (sweep / "figures" / f"{name}.png").is_file() and (sweep / "figures" / f"{name}.pdf").is_file()

    kept, killed = jobs
    kept_stamp = (kept / "manifest.json").stat().st_mtime_ns
    killed_stamp = (killed / "manifest.json").stat().st_mtime_ns
    (killed / "DONE").unlink()  # as if the run was killed before it finished
    out = run_cli(*sweep_args, "hydra.callbacks.gather.figures=false")  # figures were checked above
    assert f"already complete, skipped: {kept}" in out.stdout
    assert (kept / "manifest.json").stat().st_mtime_ns == kept_stamp  # not rerun
    assert (killed / "manifest.json").stat().st_mtime_ns != killed_stamp and is_complete(killed)  # rerun
    assert len(pd.read_parquet(sweep / "sweep_summary.parquet")) == len(summary)


@pytest.mark.slow
def test_a_simulated_sweep_runs_on_a_local_ray_instance_and_is_gathered(tmp_path):
    """Three simulated points as Ray tasks: `hydra/launcher=ray` starts a local Ray instance (the
    dashboard left out: it only slows the start), each point runs in a Ray worker, and the sweep is
    gathered on the driver as under any launcher."""
    sweep = tmp_path / "sweep"
    done = run_cli("-m", *TINY_SWEEP, "engine=[qllm,fcfs_rtc,priority_cb]", "executor=sim", "hardware=a100_80gb",
                   "trace.rate=10,20,40", f"hydra.sweep.dir={sweep}", "hydra/launcher=ray",
                   "+hydra.launcher.ray.init.include_dashboard=false")  # fmt: skip
    printed = done.stdout + done.stderr
    assert "Started a local Ray instance" in printed and "Ray Launcher is launching 3 jobs" in printed

    jobs = gather.find_complete_runs(sweep)
    assert [OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.job.id for job in jobs] == [
        f"job_id_for_{index}" for index in range(3)]  # the Ray launcher's job ids, in sweep order  # fmt: skip
    command = json.loads((jobs[0] / "manifest.json").read_text())["command"]  # a Ray worker's argv says nothing
    assert command.startswith("qllm-bench ") and "trace.rate=10" in command and "executor=sim" in command
    summary = pd.read_parquet(sweep / "sweep_summary.parquet")
    assert len(summary) == 3 * 3 * 3  # rates x engines x (LS, BE, all)
    assert sorted(summary["rate"].unique()) == [10, 20, 40] and set(summary["simulated_on"]) == {"a100_80gb"}
    assert set(summary["engine"]) == {"qllm", "fcfs_rtc", "priority_cb"} and (summary["n_finished"] == summary["n"]).all()
    for name in ("ttft_vs_rate", "slo_vs_rate", "throughput_vs_rate", "turnaround", "ttft_cdf", "timeline"):
        assert (sweep / "figures" / f"{name}.png").is_file()


def test_qllm_report_gathers_any_results_folder_after_the_fact(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for rate in (2, 4):  # two hand-written runs, as the app writes them
        run_dir = sweep / f"trace.rate={rate}"
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- trace.rate={rate}\n- trace.time_scale=0.5\n- engine=[a]\n")
        write_run(run_dir, rate)
    (sweep / "unfinished").mkdir()  # no DONE: ignored
    gather.main([str(sweep), "--out", str(tmp_path / "report")])
    printed = capsys.readouterr().out
    assert "2 runs" in printed and "TTFT p50" in printed
    summary = pd.read_parquet(tmp_path / "report" / "sweep_summary.parquet")
    assert summary["time_scale"].tolist() == [0.5] * 4 and "engine" in summary and "run_dir" in summary
    assert summary["offered_rps"].tolist() == pytest.approx([2.0, 2.0, 4.0, 4.0])  # = rate
    assert (tmp_path / "report" / "figures" / "ttft_vs_rate.png").is_file()
    assert (tmp_path / "report" / "report.html").is_file()  # the page too, from tables that lack some columns


def write_run(run_dir: Path, rate: float) -> None:
    """A minimal complete run: two requests of qllm, one per class, arriving 1/rate s apart."""
    from harness.results.run_dir import mark_complete, write_tables

    requests = pd.DataFrame({
        "run_id": run_dir.name, "engine": "qllm", "request_id": ["a", "b"], "priority_class": ["LS", "BE"],
        "arrival_s": [0.0, 1.0 / rate], "ttft_s": [0.1, 0.2], "slo_ttft_s": [0.5, None], "e2e_s": [0.3, 0.4],
    })  # fmt: skip
    summary = pd.DataFrame({
        "run_id": run_dir.name, "engine": "qllm", "rate": rate, "priority_class": ["LS", "BE"],
        "n": 1, "ttft_s_mean": [0.1, 0.2], "ttft_s_p50": [0.1, 0.2], "ttft_s_p99": [0.1, 0.2], "tpot_s_mean": 0.01,
        "e2e_s_mean": [0.3, 0.4], "e2e_s_p50": [0.3, 0.4], "e2e_s_p99": [0.3, 0.4], "slo_attainment": [1.0, 1.0],
        "throughput_tok_s": 10.0, "throughput_rps": 1.0,
    })  # fmt: skip
    timeline = pd.DataFrame({
        "engine": "qllm", "t_start_s": [0.0], "t_end_s": [0.1], "duration_s": [0.1], "kind": ["prefill"],
        "layer": pd.array([None], "Int64"), "request_ids": [["a", "b"]], "is_resume": [False], "num_ls": [1],
    })  # fmt: skip
    write_tables(run_dir, {"requests": requests, "summary": summary, "timeline": timeline})
    mark_complete(run_dir)


def test_qllm_report_help_and_console_script(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gather.main(["--help"])
    assert exit_info.value.code == 0 and "DONE" in capsys.readouterr().out
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["qllm-report"] == "harness.results.gather:main"


def test_qllm_report_says_when_there_is_nothing_to_gather(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gather.main([str(tmp_path)])
    assert exit_info.value.code == 2 and "qllm-report: error: no complete run" in capsys.readouterr().err


def test_parameter_columns_are_short_unique_names():
    names = gather.parameter_names(
        ["trace.rate", "trace.time_scale", "trace.seed", "engine.qllm.policy.max_batch_size",
         "engine.fcfs_rtc.policy.max_batch_size", "model"], existing=["rate", "seed", "model"])  # fmt: skip
    assert names == {
        "trace.rate": None, "trace.time_scale": "time_scale", "trace.seed": "trace.seed", "model": None,
        "engine.qllm.policy.max_batch_size": "engine.qllm.policy.max_batch_size",
        "engine.fcfs_rtc.policy.max_batch_size": "engine.fcfs_rtc.policy.max_batch_size",
    }  # fmt: skip


def compose_launcher(name: str):
    return compose_config(f"hydra/launcher={name}", with_hydra=True).hydra.launcher


@pytest.mark.parametrize("name", ["joblib", "submitit_slurm", "ray"])
def test_plugin_launchers_compose(name):
    if not has_plugin(name):
        pytest.skip(f"{PLUGINS[name]} not installed (pip install -e '.[{'slurm' if name == 'submitit_slurm' else name}]')")
    assert compose_launcher(name)._target_.startswith(PLUGINS[name])


def test_slurm_gpu_launcher_asks_for_one_gpu_per_point():
    if has_plugin("submitit_slurm"):
        launcher = compose_launcher("slurm_gpu")
        assert launcher._target_.endswith("SlurmLauncher")
    else:  # the plugin's schema is needed to compose; check our file's own fields at least
        launcher = OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "slurm_gpu.yaml")
        assert launcher.defaults == ["submitit_slurm"]
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1


def test_ray_gpu_launcher_asks_for_one_gpu_per_point():
    launcher = compose_launcher("ray_gpu")
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert launcher.ray.remote.num_gpus == 1 and launcher.ray.init.address == "auto"


def test_sweep_axis_is_the_swept_parameter_and_a_replay_is_plotted_against_its_load():
    runs = pd.DataFrame({"run_dir": ["a", "b"], "rate": [None, None], "burstiness": [1.0, 1.0],
                         "offered_rps": [9.5, 10.5], "trace.seed": [0, 1]})  # fmt: skip
    assert gather.sweep_axis(runs) is None  # seeds are replicates; offered_rps merely varies with them
    assert gather.sweep_axis(runs.assign(time_scale=[0.5, 1.0])) == "offered_rps"
    assert gather.sweep_axis(runs.assign(rate=[2.0, 4.0], time_scale=[0.5, 1.0])) == "rate"
    assert gather.focus_run(runs.assign(rate=[4.0, 2.0]), "rate") == "a"  # the most loaded point


def test_a_sweep_point_is_named_by_its_overrides_and_shortened_past_what_a_folder_name_takes():
    short = "trace.rate=20"
    assert point_dirname(short) == short
    engines = ("qllm", "qllm_prototype", "fcfs_rtc", "fcfs_cb", "priority_cb")
    long = ",".join(f"engine.{name}.policy.{key}" for name in engines for key in ("max_batch_size=32", "max_batch_tokens=4096"))
    named = [point_dirname(f"{long},trace.rate={rate}") for rate in (1, 2)]
    assert named[0] == point_dirname(f"{long},trace.rate=1")  # deterministic: a rerun finds the point
    assert named[0] != named[1] and all(len(name.encode()) == 255 and name.startswith(long[:200]) for name in named)


@pytest.mark.slow
def test_a_sweep_with_many_overrides_runs_and_is_gathered(tmp_path):
    """Five engines' batch limits named in a sweep made a point's folder name longer than a file system
    takes (255 bytes): every point failed to start."""
    sweep = tmp_path / "sweep"
    limits = [f"engine.{name}.policy.max_batch_size=2" for name in ("qllm", "fcfs_rtc")]
    limits += [f"engine.{name}.policy.max_batch_tokens=2048" for name in ("qllm", "fcfs_rtc")]
    limits += [f"engine.{name}.catch_up_merge=false" for name in ("qllm",)]
    run_cli("-m", *TINY_SWEEP, *limits, "trace.rate=20,40", f"hydra.sweep.dir={sweep}",
            "hydra.callbacks.gather.figures=false")  # fmt: skip
    jobs = gather.find_complete_runs(sweep)
    assert len(jobs) == 2 and all(len(job.name.encode()) <= 255 for job in jobs)
    assert sorted(pd.read_parquet(sweep / "sweep_summary.parquet")["rate"].unique()) == [20, 40]
