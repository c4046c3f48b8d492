"""`fcfs_cb`: FCFS iteration-level continuous batching (Orca, vLLM's default)."""

from __future__ import annotations

from collections import deque

from qllm.batch import Batch
from qllm.policies.protocol import Decision, take_prefills
from qllm.sequence import Sequence


class FCFSContinuousBatchingPolicy:
    """Between iterations, waiting prompts are admitted first-come-first-served while fewer than B
    sequences are running; otherwise every running sequence decodes one token. Never preempts."""

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.prefill: deque[Sequence] = deque()
        self.decode: deque[Sequence] = deque()  # admitted sequences ready for their next token
        self.num_running = 0  # admitted and not finished: decode-ready or inside the running batch

    def add(self, sequence: Sequence) -> None:
        (self.prefill if sequence.is_prefill else self.decode).append(sequence)

    def has_waiting(self) -> bool:
        return bool(self.prefill or self.decode)

    def waiting(self, now_s: float) -> list[Sequence]:
        return [*self.prefill, *self.decode]

    def finished(self, sequence: Sequence) -> None:
        self.num_running -= 1

    def schedule(self, suspended: list[Batch], now_s: float) -> Decision:
        room = self.max_batch_size - self.num_running
        if self.prefill and room > 0:
            batch = take_prefills(self.prefill, room, self.max_batch_tokens)
            self.num_running += len(batch)
            return Decision(start=batch)
        batch, self.decode = list(self.decode), deque()
        return Decision(start=batch)
