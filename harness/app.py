"""`qllm-bench`: the Hydra app that replays a trace against engines and writes result tables."""

from __future__ import annotations

from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.clock import RealClock
from harness.metrics import requests_table, summary_table, timeline_table
from harness.recorder import Recorder
from harness.replay import replay, requests_from_trace
from harness.report import comparison_table
from harness.results import write_config, write_manifest, write_tables
from harness.workload import load_workload


def warm_up(model, num_tokens: int) -> None:
    """One short greedy generate, so lazy initialisation is not charged to the first request."""
    if num_tokens > 0:
        with torch.inference_mode():
            prompt = torch.ones(1, 8, dtype=torch.long, device=model.device)
            model.generate(prompt, max_new_tokens=num_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)


def run_engine(name: str, engine_cfg: DictConfig, model, requests, cfg: DictConfig, run_id: str) -> dict:
    """Replay `requests` against one engine; returns its requests, timeline and summary tables."""
    torch.manual_seed(cfg.seed)
    recorder = Recorder(RealClock())
    engine = instantiate(engine_cfg, model=model, recorder=recorder, name=name)
    replay(requests, engine, recorder, progress=cfg.progress)
    slo = OmegaConf.to_container(cfg.slo, resolve=True)
    requests_df = requests_table(requests, recorder, slo, run_id, name, with_token_ids=cfg.record_token_ids)
    classes = {r.request_id: r.priority_class for r in requests}
    return {
        "requests": requests_df,
        "timeline": timeline_table(recorder, run_id, name, classes),
        "summary": summary_table(requests_df, recorder, run_params(cfg, name)),
    }


def run_params(cfg: DictConfig, engine: str) -> dict:
    """The columns that identify a run in a sweep's gathered summary."""
    choices = HydraConfig.get().runtime.choices
    return {
        "engine": engine,
        "model": choices.get("model"),
        "trace": cfg.trace.name,
        "rate": cfg.trace.rate,
        "burstiness": cfg.trace.burstiness,
        "ls_fraction": cfg.trace.ls_fraction,
        "seed": cfg.seed,
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_id = run_dir.name
    requests = requests_from_trace(load_workload(cfg.trace))
    model = instantiate(cfg.model)
    warm_up(model, cfg.warmup_tokens)
    write_config(run_dir, cfg)
    results = [run_engine(name, engine_cfg, model, requests, cfg, run_id) for name, engine_cfg in cfg.engine.items()]
    tables = {name: pd.concat([r[name] for r in results], ignore_index=True) for name in results[0]}
    write_tables(run_dir, tables)
    write_manifest(run_dir, {"run_id": run_id, "num_requests": len(requests)})
    print(comparison_table(tables["summary"]))
    print(f"\nresults: {run_dir}")


if __name__ == "__main__":
    main()
