"""The engines a run measures: the protocol every engine implements, and how each is built.

An engine's constructor names what it needs, and the harness passes just that: `executor` (a
factory of executors for the run's model: the QLLM engines), `model` (`hf_generate`), `clock`,
`events` (the run's `Recorder`) and `name`. The executor factory is bound the same way to what its
own constructor names: `model` (the real executor), or `model_config` and the engine's `clock`
(the simulator). The model is loaded once per run, and only when something asks for it; a run
whose executor needs no model refuses an engine that does, instead of loading its weights.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from qllm.events import Clock
from qllm.request import Request


class Engine(Protocol):
    name: str  # how the engine appears in result tables

    def submit(self, request: Request) -> None:
        """The request has arrived; the engine queues it (or rejects it through its event sink)."""

    def step(self) -> None:
        """Run one non-preemptible quantum of work, then return so new arrivals can be seen."""

    def idle(self) -> bool:
        """True when nothing is queued, running or suspended."""


def wanted(target: Callable, offered: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """The offered values `target`'s parameters name, each made by calling its provider."""
    parameters = inspect.signature(target).parameters
    return {name: provide() for name, provide in offered.items() if name in parameters}


class RunResources:
    """What a run's engines are built from, each made on first use and shared by every engine."""

    def __init__(self, cfg: DictConfig, model=None) -> None:
        self.cfg = cfg  # the run's config: its `model`, `executor` and `clock` nodes
        if model is not None:  # a model built elsewhere stands for cfg.model
            self.model = model

    @functools.cached_property
    def model(self):
        return instantiate(self.cfg.model)

    @functools.cached_property
    def model_config(self):
        """The model's Hugging Face config, without its weights (qllm.models.load_config)."""
        return instantiate(self.cfg.model, _target_="qllm.models.load_config")

    @functools.cached_property
    def executor(self) -> Callable:
        """The executor factory (conf/executor), bound to what it asks of the run: `model`, `model_config`."""
        factory = instantiate(self.cfg.executor)
        offered = {"model": lambda: self.model, "model_config": lambda: self.model_config}
        return functools.partial(factory, **wanted(factory, offered))

    @property
    def runs_a_model(self) -> bool:
        """False when the executor simulates the model instead of running it."""
        return "model" in inspect.signature(self.executor.func).parameters

    def new_clock(self) -> Clock:
        """A fresh clock for one engine's run, of the kind the executor config names (`clock`)."""
        return instantiate(self.cfg.clock)

    def check_engine(self, engine_cfg: DictConfig, name: str) -> None:
        """An engine that runs the model itself cannot run where the executor only simulates it."""
        if "model" in inspect.signature(get_object(engine_cfg._target_)).parameters and not self.runs_a_model:
            raise ValueError(
                f"engine {name} runs the model itself, but executor {self.cfg.executor._target_} simulates "
                f"it without weights: choose executor=real, or leave {name} out of engine=[...]"
            )

    def build_engine(self, engine_cfg: DictConfig, name: str, clock, events) -> Engine:
        self.check_engine(engine_cfg, name)
        target = get_object(engine_cfg._target_)
        executor = functools.partial(self.executor, **wanted(self.executor, {"clock": lambda: clock}))
        offered = {
            "model": lambda: self.model,
            "executor": lambda: executor,
            "clock": lambda: clock,
            "events": lambda: events,
            "name": lambda: name,
        }
        return instantiate(engine_cfg, **wanted(target, offered))
