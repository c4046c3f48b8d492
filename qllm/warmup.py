"""Warming an engine up before it is timed or serves traffic."""

from __future__ import annotations

from qllm.request import DEFAULT_PRIORITY, PRIORITY_CLASSES, Request

WARMUP_PROMPT_LEN = 8


def warm_up_engine(engine, num_tokens: int) -> None:
    """Serve two short requests (LS and BE, ids `warm-up-0`, `warm-up-1`) to the end, so lazy
    initialisation along the engine's own path is not charged to its first real request."""
    if num_tokens <= 0:
        return
    for i, priority_class in enumerate(PRIORITY_CLASSES):
        request = Request(f"warm-up-{i}", 0.0, WARMUP_PROMPT_LEN, num_tokens, priority_class,
                          DEFAULT_PRIORITY[priority_class])  # fmt: skip
        engine.submit(request)
    while not engine.idle():
        engine.step()
