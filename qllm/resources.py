"""What engines are built from, once per process: the model and the executor factory named by a
config's `model` and `executor` nodes, made on first use. `qllm-bench` builds each engine of a run
from it, `qllm-serve` the one engine it serves.

An engine's constructor names what it needs, and gets just that: `executor` (a factory of
executors for the model: the QLLM engines), `model` (`hf_generate`), `clock`, `events` and
`name`. The model is loaded only when an engine asks for it (an HTTP client engine needs none).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig


def wanted(target: Callable, offered: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """The offered values `target`'s parameters name, each made by calling its provider."""
    parameters = inspect.signature(target).parameters
    return {name: provide() for name, provide in offered.items() if name in parameters}


class RunResources:
    """The model and executor factory of a config, each made on first use and shared by every engine."""

    def __init__(self, cfg: DictConfig, model=None) -> None:
        self.cfg = cfg  # a composed config: its `model` and `executor` nodes
        if model is not None:  # a model built elsewhere stands for cfg.model
            self.model = model

    @functools.cached_property
    def model(self):
        return instantiate(self.cfg.model)

    @functools.cached_property
    def executor(self) -> Callable:
        """The executor factory (conf/executor), bound to what it asks of the run: its `model`."""
        factory = instantiate(self.cfg.executor)
        return functools.partial(factory, **wanted(factory, {"model": lambda: self.model}))

    def build_engine(self, engine_cfg: DictConfig, name: str, clock, events):
        """The engine of `engine_cfg`, given what its constructor names and its config does not set
        (`openai_http`'s `model` is the served model's name, not weights to load)."""
        target = get_object(engine_cfg._target_)
        offered = {
            "model": lambda: self.model,
            "executor": lambda: self.executor,
            "clock": lambda: clock,
            "events": lambda: events,
            "name": lambda: name,
        }
        offered = {key: provide for key, provide in offered.items() if key not in engine_cfg}
        return instantiate(engine_cfg, **wanted(target, offered))
