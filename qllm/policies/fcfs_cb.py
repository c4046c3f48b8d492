"""`fcfs_cb`: FCFS iteration-level continuous batching (Orca, vLLM's default)."""

from __future__ import annotations

from qllm.policies.base import QueuePolicy
from qllm.policies.protocol import Decision
from qllm.queues import FCFSQueue, take_batch
from qllm.sequence import Sequence


class FCFSContinuousBatchingPolicy(QueuePolicy):
    """Between iterations, waiting prompts are admitted first-come-first-served while fewer than B
    sequences are running; otherwise every running sequence decodes one token. Never preempts.
    `mixed_batches`: admitted prompts and the running sequences' decode tokens share one pass."""

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048, mixed_batches: bool = False):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.mixed_batches = mixed_batches
        self.prefill = FCFSQueue()
        self.decode = FCFSQueue()  # admitted sequences ready for their next token

    @property
    def num_running(self) -> int:
        """Taken for their prompt pass, not finished: decode-ready or running."""
        return self.scheduler.num_admitted() - len(self.prefill)

    def queues(self):
        return self.prefill, self.decode

    def add(self, sequence: Sequence) -> None:
        (self.prefill if sequence.is_prefill else self.decode).add(sequence)

    def schedule(self) -> Decision:
        room = self.max_batch_size - self.num_running
        if len(self.prefill) and room > 0:
            batch = take_batch(self.prefill, room, self.max_batch_tokens)
            if self.mixed_batches:
                batch = take_batch(self.decode, len(self.decode)) + batch
            return Decision(start=batch)
        return Decision(start=take_batch(self.decode, len(self.decode)))
