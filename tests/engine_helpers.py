"""Shared pieces of the engine tests: a tiny model, a step clock, a step-driven replay, the oracle."""

from __future__ import annotations

from functools import cache

from hydra.utils import instantiate

from baselines.hf_generate import greedy_generate
from harness.recorder import Recorder
from harness.request import DEFAULT_PRIORITY, Request
from qllm.models import load_model
from qllm.prompts import prompt_token_ids

TINY_CONFIG = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=256,
)


@cache
def tiny_model(seed: int = 0):
    return load_model(model_type="mixtral", config=TINY_CONFIG, seed=seed)


class StepClock:
    """Time in engine steps: deterministic, so a test decides exactly where arrivals fall."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep_until(self, t_s: float) -> None:
        self.t = max(self.t, t_s)


def make_request(i: int, prompt_len: int, output_len: int, priority_class: str, arrival_s: float) -> Request:
    return Request(
        request_id=f"r{i}",
        arrival_s=arrival_s,
        prompt_len=prompt_len,
        output_len=output_len,
        priority_class=priority_class,
        priority=DEFAULT_PRIORITY[priority_class],
    )


def drive(engine, recorder: Recorder, requests: list[Request]) -> None:
    """Open-loop replay on a StepClock: one time unit per engine step."""
    clock = recorder.clock
    pending = sorted(requests, key=lambda r: r.arrival_s)
    while pending or not engine.idle():
        while pending and pending[0].arrival_s <= clock.now():
            engine.submit(pending.pop(0))
        if engine.idle():
            clock.sleep_until(pending[0].arrival_s)
            continue
        engine.step()
        clock.t += 1


def build_engine(engine_yaml: dict, model, recorder: Recorder, name: str):
    return instantiate(engine_yaml, model=model, recorder=recorder, name=name)


def oracle_tokens(model, request: Request) -> list[int]:
    """`model.generate` greedy output for the request alone."""
    prompt = prompt_token_ids(request, model.config.vocab_size)
    return greedy_generate(model, [prompt], request.output_len)[0]


def ls_waits(timeline, requests, recorder) -> dict[str, list]:
    """Per LS request, the BE-only quanta that ran between its arrival and its first scheduling.

    StepClock: a step started at t occupies [t, t + 1), so an arrival at t + 0.5 lands while
    that step's quantum runs; the engine sees it at the next step."""
    be_only = timeline[timeline["num_ls"] == 0]
    waits = {}
    for request in requests:
        if request.priority_class != "LS":
            continue
        arrival_s, scheduled_s = request.arrival_s, recorder.requests[request.request_id].first_scheduled_s
        overlapping = (be_only["t_start_s"] + 1 > arrival_s) & (be_only["t_start_s"] < scheduled_s)
        waits[request.request_id] = list(be_only[overlapping].itertuples())
    return waits
