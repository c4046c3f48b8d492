"""The server's request path without HTTP: the engine thread, its event sink and `Completions`
over a real engine. An end-of-sequence token ends a request that does not ignore it (once it
has `min_tokens`), and the engine drops the rest of it."""

from __future__ import annotations

import asyncio

from qllm.clock import WallClock
from qllm.request import Request
from qllm.server.completions import Completions
from qllm.server.engine_loop import EngineLoop
from qllm.server.metrics import ServerMetrics
from qllm.server.protocol import CompletionRequest
from qllm.server.streams import ServerEvents
from tests.helpers import engine_config, wait_for

PROMPT = (5, 17, 33, 101, 7)
MAX_TOKENS = 64  # long enough that a stopped request is still generating when its abort arrives


def serve(resources, config, eos_token_id: int | None, bodies: list[dict]) -> tuple[list[dict], ServerMetrics, object]:
    """Answer each body (one after another) through a started engine thread; returns the answers,
    the metrics and the engine."""
    clock, metrics = WallClock(), ServerMetrics()
    events = ServerEvents(clock, metrics)
    engine = resources.build_engine(engine_config(config, "qllm"), "qllm", clock, events)
    engine_loop = EngineLoop(engine, events, metrics)
    completions = Completions(engine_loop, tokenizer=None, eos_token_id=eos_token_id, model_name="m")

    async def answer_all() -> list[dict]:
        answers = []
        for i, fields in enumerate(bodies):
            body = CompletionRequest(model="m", prompt=list(PROMPT), max_tokens=MAX_TOKENS, return_token_ids=True, **fields)
            request = Request(f"r{i}", clock.now(), len(PROMPT), MAX_TOKENS, "BE", 1, PROMPT)
            answers.append(await completions.respond(request, body, is_chat=False))
        return answers

    engine_loop.start()
    try:
        answers = asyncio.run(answer_all())
        wait_for(engine.idle)
    finally:
        engine_loop.stop()
    return answers, metrics, engine


def choice(answer: dict) -> tuple[list[int], str]:
    (only,) = answer["choices"]
    return only["token_ids"], only["finish_reason"]


def test_an_end_of_sequence_token_stops_a_request_after_min_tokens(resources, config):
    (free,), _, _ = serve(resources, config, None, [{"ignore_eos": True}])
    tokens, finish_reason = choice(free)
    assert len(tokens) == MAX_TOKENS and finish_reason == "length"
    eos = tokens[2]  # the model's third token stands for the end of sequence
    first_after_min = next((i for i, token in enumerate(tokens) if token == eos and i + 1 >= 4), None)
    answers, metrics, engine = serve(resources, config, eos, [{}, {"min_tokens": 4}, {"ignore_eos": True}])
    assert choice(answers[0]) == (tokens[:3], "stop")
    if first_after_min is None:
        assert choice(answers[1]) == (tokens, "length")
    else:
        assert choice(answers[1]) == (tokens[: first_after_min + 1], "stop")
    assert choice(answers[2]) == (tokens, "length")
    assert answers[0]["usage"]["completion_tokens"] == 3
    stopped = metrics.registry.get_sample_value("qllm:requests_total", {"priority_class": "BE", "status": "stopped"})
    assert stopped == 1 + (first_after_min is not None)  # the engine dropped the rest of each stopped request
    assert engine.scheduler.memory.pool.used_bytes == 0
