"""The engines a run measures: the protocol every engine implements, and how each is built.

An engine's constructor names what it needs, and the harness passes just that: `executor` (a
factory of executors for the run's model: the QLLM engines), `model` (`hf_generate`), `clock`,
`events` (the run's `Recorder`) and `name`. The model is loaded once per run, and only when an
engine asks for it (an HTTP client engine needs none).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

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
        self.cfg = cfg  # the run's config: its `model` and `executor` nodes
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

    def build_engine(self, engine_cfg: DictConfig, name: str, clock, events) -> Engine:
        target = get_object(engine_cfg._target_)
        offered = {
            "model": lambda: self.model,
            "executor": lambda: self.executor,
            "clock": lambda: clock,
            "events": lambda: events,
            "name": lambda: name,
        }
        return instantiate(engine_cfg, **wanted(target, offered))
