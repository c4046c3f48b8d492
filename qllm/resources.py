"""What engines are built from, once per process: the model and the executor factory named by a
config's `model` and `executor` nodes, made on first use. `qllm-bench` builds each engine of a run
from it, `qllm-serve` the one engine it serves.

An engine's constructor names what it needs, and gets just that: `executor` (a factory of
executors for the model: the QLLM engines), `model` (`hf_generate`), `clock`, `events` and
`name`. The executor factory is bound the same way to what its own constructor names: `model`
(the real executor), or `model_config` and the engine's `clock` (the simulator). The model is
loaded only when something asks for it (an HTTP client engine needs none); where the executor
only simulates the model, an engine that would run it is refused instead of loading its weights.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from qllm.errors import ConfigurationError


def wanted(target: Callable, offered: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """The offered values `target`'s parameters name, each made by calling its provider."""
    parameters = inspect.signature(target).parameters
    return {name: provide() for name, provide in offered.items() if name in parameters}


class RunResources:
    """The model and executor factory of a config, each made on first use and shared by every engine."""

    def __init__(self, cfg: DictConfig, model=None) -> None:
        self.cfg = cfg  # a composed config: its `model`, `executor` and `clock` nodes
        if model is not None:  # a model built elsewhere stands for cfg.model
            self.model = model

    @functools.cached_property
    def model(self):
        return instantiate(self.cfg.model)

    @functools.cached_property
    def model_config(self):
        """The model's Hugging Face config, without its weights (qllm.modeling.models.load_config)."""
        return instantiate(self.cfg.model, _target_="qllm.modeling.models.load_config")

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

    def new_clock(self):
        """A fresh clock for one engine's run, of the kind the executor config names (`clock`)."""
        return instantiate(self.cfg.clock)

    def check_engine(self, engine_cfg: DictConfig, name: str) -> None:
        """What the simulating executor cannot stand in for: an engine that runs the model itself."""
        if "model" in inspect.signature(get_object(engine_cfg._target_)).parameters and "model" not in engine_cfg \
                and not self.runs_a_model:  # fmt: skip
            raise ConfigurationError(
                f"engine {name} runs the model itself, but executor {self.cfg.executor._target_} simulates "
                f"it without weights: choose executor=real, or leave {name} out of engine=[...]"
            )

    def build_engine(self, engine_cfg: DictConfig, name: str, clock, events):
        """The engine of `engine_cfg`, given what its constructor names and its config does not set
        (`openai_http`'s `model` is the served model's name, not weights to load)."""
        self.check_engine(engine_cfg, name)
        target = get_object(engine_cfg._target_)
        offered = {
            "model": lambda: self.model,
            "executor": lambda: functools.partial(self.executor, **wanted(self.executor, {"clock": lambda: clock})),
            "clock": lambda: clock,
            "events": lambda: events,
            "name": lambda: name,
        }
        offered = {key: provide for key, provide in offered.items() if key not in engine_cfg}
        return instantiate(engine_cfg, **wanted(target, offered))
