"""`qllm-serve`: the Hydra app that builds one engine from config and serves it over HTTP.

    qllm-serve model=tiny_mixtral engine=qllm port=8000

It composes conf/serve.yaml, which shares the `model`, `executor` and `engine` groups with
`qllm-bench`, so an engine is built from the same files and the same weights either way.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
import uvicorn
from fastapi import FastAPI
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from qllm.clock import WallClock
from qllm.errors import ConfigurationError, report_user_errors, user_errors_reported
from qllm.resources import RunResources
from qllm.served_engine import ServedEngine
from qllm.server.app import create_app
from qllm.server.completions import Completions
from qllm.server.engine_loop import EngineLoop
from qllm.server.metrics import ServerMetrics
from qllm.server.requests import PriorityMapping, RequestBuilder
from qllm.server.streams import ServerEvents
from qllm.warmup import warm_up_engine

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def served_model_name(cfg: DictConfig, model_choice: str | None) -> str:
    """What clients send as `model`: the configured name, else the weights' path, else the model config's name."""
    return cfg.served_model_name or cfg.model.get("pretrained") or model_choice or "qllm"


def build_app(cfg: DictConfig, model_name: str) -> FastAPI:
    """The engine of `cfg.engine` (exactly one), warmed up, behind the HTTP API."""
    if len(cfg.engine) != 1:
        raise ConfigurationError(f"qllm-serve serves one engine; got {len(cfg.engine)} ({', '.join(cfg.engine)}): "
                          f"choose one, e.g. engine=qllm")  # fmt: skip
    (name, engine_cfg), = cfg.engine.items()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    clock, metrics = WallClock(cfg.model.get("device", "cpu")), ServerMetrics()
    events = ServerEvents(clock, metrics)
    engine = RunResources(cfg).build_engine(engine_cfg, name, clock, events)
    if not isinstance(engine, ServedEngine):
        parts = ("model_config", "submit", "step", "idle", "abort", "rejection_reason", "stats")
        missing = [part for part in parts if part not in dir(engine)]
        raise ConfigurationError(f"engine {name} ({engine_cfg._target_}) cannot be served: it lacks {', '.join(missing)} "
                                 f"of qllm.served_engine.ServedEngine; serve a QLLM engine (qllm, fcfs_cb, priority_cb, ...)")
    warm_up_engine(engine, cfg.warmup_tokens)
    tokenizer = instantiate(cfg.tokenizer) if cfg.get("tokenizer") else None
    model_config = engine.model_config
    builder = RequestBuilder(model_name, model_config, engine.rejection_reason, tokenizer,
                             PriorityMapping(cfg.ls_max_priority))  # fmt: skip
    engine_loop = EngineLoop(engine, events, metrics, cfg.gauge_interval_s)
    completions = Completions(engine_loop, tokenizer, getattr(model_config, "eos_token_id", None), model_name)
    return create_app(engine_loop, builder, completions, metrics, clock)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    with user_errors_reported("qllm-serve"):
        app = build_app(cfg, served_model_name(cfg, HydraConfig.get().runtime.choices.get("model")))
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=5)


def cli() -> None:
    """`qllm-serve`: a user's mistake (an option it cannot serve, a config that does not compose)
    ends in one line on stderr and exit status 2 (HYDRA_FULL_ERROR=1: a traceback)."""
    report_user_errors(main, "qllm-serve")


if __name__ == "__main__":
    cli()
