"""`qllm-bench`: the Hydra app that replays a trace against engines and writes result tables."""

from __future__ import annotations

import contextlib
import shlex
import signal
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from harness.results.comparison import comparison_table
from harness.engines import RunResources
from harness.results.metrics import requests_table, summary_table, timeline_table
from harness.recorder import Recorder
from harness.results.repeats import PER_REPEAT_TABLE, aggregate_repeats, tag_repeat, trace_for_repeat
from harness.replay import replay, requests_from_trace
from harness import sweep_dirs  # noqa: F401  (registers the sweep points' folder names, conf/config.yaml)
from harness.results.run_dir import is_complete, mark_complete, write_config, write_manifest, write_tables
from harness.traces.workload import PROJECT_ROOT, load_workload
from qllm.errors import ConfigurationError, report_user_errors, user_errors_reported
from qllm.warmup import warm_up_engine


TABLES = ("requests", "summary", "timeline")
CONF_DIR = PROJECT_ROOT / "conf"


def compose_config(*overrides: str, with_hydra: bool = False) -> DictConfig:
    """conf/config.yaml with command-line `overrides`, composed as `qllm-bench` composes it, for
    scripts and tests (`with_hydra`: keep Hydra's own node)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=with_hydra)


def warm_up(engine_cfg, resources: RunResources, num_tokens: int) -> None:
    """Warm up a throwaway engine of the same config (qllm.warmup), so lazy initialisation along
    the engine's own path is not charged to the first timed request (a simulated run's virtual
    time charges none)."""
    if num_tokens <= 0 or not resources.runs_a_model:
        return
    clock = resources.new_clock()
    warm_up_engine(resources.build_engine(engine_cfg, "warm-up", clock, Recorder(clock)), num_tokens)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler stopping the job) interrupts the run as Ctrl-C does, so what was
    recorded is still written."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_engine(
    name: str, engine_cfg: DictConfig, resources: RunResources, requests, cfg: DictConfig, run_params: dict
) -> dict:
    """Replay `requests` against one engine; returns its requests, timeline and summary tables,
    and under `interrupted` the reason the replay stopped early (None when it ran to the end)."""
    warm_up(engine_cfg, resources, cfg.warmup_tokens)
    torch.manual_seed(cfg.seed)
    clock = resources.new_clock()
    recorder = Recorder(clock)
    engine = resources.build_engine(engine_cfg, name, clock, recorder)
    interrupted = None
    try:
        replay(requests, engine, recorder, progress=cfg.progress)
    except KeyboardInterrupt as stop:
        interrupted = str(stop) or "SIGINT"
    slo = OmegaConf.to_container(cfg.slo, resolve=True)
    run_id = run_params["run_id"]
    requests_df = requests_table(requests, recorder, slo, run_id, name, with_token_ids=cfg.record_token_ids)
    classes = {r.request_id: r.priority_class for r in requests}
    return {
        "requests": requests_df,
        "timeline": timeline_table(recorder, run_id, name, classes),
        "summary": summary_table(requests_df, recorder, {**run_params, "engine": name}),
        "interrupted": interrupted,
    }


def sweep_columns(cfg: DictConfig, run_id: str, model_name: str) -> dict:
    """The columns that identify a run in a sweep's gathered summary; `simulated_on` names the cost
    model of a simulated run (None: measured)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "run_id": run_id,
        "model": model_name,
        "simulated_on": choices.get("hardware") if "hardware" in cfg else None,
        "trace": cfg.trace.name,
        "rate": cfg.trace.rate,
        "burstiness": cfg.trace.burstiness,
        "ls_fraction": cfg.trace.ls_fraction,
        "seed": cfg.seed,
    }


def job_command() -> dict:
    """`command` for the manifest: `qllm-bench` and this job's own overrides, which rerun the point
    (a sweep job's process may be a launcher's worker, a Ray worker say, whose argv says nothing of
    the run). Empty outside Hydra: the manifest then records the process's argv."""
    if not HydraConfig.initialized():
        return {}
    return {"command": shlex.join(["qllm-bench", *HydraConfig.get().overrides.task])}


def check_combinations(cfg: DictConfig, resources: RunResources) -> None:
    """Refuse, before anything runs, what the chosen executor cannot do."""
    for name, engine_cfg in cfg.engine.items():
        resources.check_engine(engine_cfg, name)
    if not isinstance(cfg.get("repeats", 1), int) or cfg.get("repeats", 1) < 1:
        raise ConfigurationError(f"repeats={cfg.repeats}: give a whole number of trace seeds, 1 or more")
    if cfg.record_token_ids and not resources.runs_a_model:
        raise ConfigurationError("record_token_ids=true: the simulated executor computes no tokens; use executor=real")


def replay_repeats(cfg: DictConfig, resources: RunResources, params: dict) -> list[dict]:
    """run_engine's results for every repeat (harness.results.repeats: repeat r replays the trace drawn
    with trace.seed + r) and every engine, engines in turn within a repeat, so a slow spell of
    the machine falls on every engine alike; stops at the first interrupted replay."""
    results = []
    for repeat in range(cfg.get("repeats", 1)):
        requests = requests_from_trace(load_workload(trace_for_repeat(cfg.trace, repeat)))
        for name, engine_cfg in cfg.engine.items():
            results.append({**run_engine(name, engine_cfg, resources, requests, cfg, params), "repeat": repeat})
            if results[-1]["interrupted"]:
                return results
    return results


def tables_over_repeats(results: list[dict], repeats: int) -> dict[str, pd.DataFrame]:
    """The run's tables; with repeats > 1 every row carries its `repeat`, the per-repeat summaries
    are `summary_repeats` and `summary` is their aggregate (harness.results.repeats)."""
    if repeats == 1:
        return {name: pd.concat([r[name] for r in results], ignore_index=True) for name in TABLES}
    tables = {name: pd.concat([tag_repeat(r[name], r["repeat"]) for r in results], ignore_index=True) for name in TABLES}
    tables[PER_REPEAT_TABLE] = tables["summary"]
    tables["summary"] = aggregate_repeats(tables[PER_REPEAT_TABLE])
    return tables


def run_benchmark(cfg: DictConfig, run_dir: Path, model_name: str) -> dict[str, pd.DataFrame]:
    """Replay the configured trace against every selected engine; write and return the tables."""
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    resources = RunResources(cfg)
    check_combinations(cfg, resources)
    write_manifest(run_dir, {"run_id": run_dir.name, **job_command()})
    (run_dir / "INCOMPLETE").unlink(missing_ok=True)
    write_config(run_dir, cfg)
    params = sweep_columns(cfg, run_dir.name, model_name)
    with sigterm_as_interrupt():
        results = replay_repeats(cfg, resources, params)
    tables = tables_over_repeats(results, cfg.get("repeats", 1))
    write_tables(run_dir, tables)
    interrupted = results[-1]["interrupted"]
    if interrupted:
        (run_dir / "INCOMPLETE").write_text(f"interrupted by {interrupted}: the tables hold what was recorded\n")
        raise SystemExit(f"run interrupted by {interrupted}; partial tables in {run_dir} (no DONE marker)")
    mark_complete(run_dir)  # last: a run without this marker is incomplete
    return tables


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if is_complete(run_dir):  # a sweep run again skips the points that already finished
        print(f"already complete, skipped: {run_dir}")
        return
    with user_errors_reported("qllm-bench"):
        tables = run_benchmark(cfg, run_dir, model_name=hydra_cfg.runtime.choices.get("model"))
    print(comparison_table(tables["summary"], requests=tables["requests"]))
    print(f"\nresults: {run_dir}")


def cli() -> None:
    """`qllm-bench`: a user's mistake (a bad trace or option, a model the engine cannot run, an
    unreadable file) ends in one line on stderr and exit status 2 (HYDRA_FULL_ERROR=1: a traceback)."""
    report_user_errors(main, "qllm-bench")


if __name__ == "__main__":
    cli()
