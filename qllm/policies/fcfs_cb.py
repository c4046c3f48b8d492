"""`fcfs_cb`: FCFS iteration-level continuous batching (Orca, vLLM's default)."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from qllm.batch import Batch
from qllm.policies.protocol import Decision
from qllm.queues import FCFSQueue, take_batch
from qllm.sequence import Sequence


class FCFSContinuousBatchingPolicy:
    """Between iterations, waiting prompts are admitted first-come-first-served while fewer than B
    sequences are running; otherwise every running sequence decodes one token. Never preempts.
    `mixed_batches`: admitted prompts and the running sequences' decode tokens share one pass."""

    serves_preemption = False

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048, mixed_batches: bool = False):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.mixed_batches = mixed_batches
        self.prefill = FCFSQueue()
        self.decode = FCFSQueue()  # admitted sequences ready for their next token
        self.admitted: set[Sequence] = set()  # taken for their prompt pass, not finished: decode-ready or running

    @property
    def num_running(self) -> int:
        return len(self.admitted)

    def add(self, sequence: Sequence) -> None:
        if sequence.is_prefill:
            self.prefill.add(sequence)
        else:
            self.decode.add(sequence)
            self.admitted.add(sequence)  # already there, unless its batch was dissolved (`remove`)

    def queued(self):
        return chain(self.prefill, self.decode)

    def has_queued(self) -> bool:
        return bool(len(self.prefill) or len(self.decode))

    def outranking(self, batch: Batch) -> Iterable[Sequence]:
        return ()

    def promote(self, sequences: list[Sequence]) -> None:
        pass  # the order here does not depend on the class

    def finished(self, sequence: Sequence) -> None:
        self.admitted.discard(sequence)

    def remove(self, sequence: Sequence) -> None:
        for queue in (self.prefill, self.decode):
            if sequence in queue:
                queue.remove(sequence)
        self.admitted.discard(sequence)

    def schedule(self) -> Decision:
        room = self.max_batch_size - self.num_running
        if len(self.prefill) and room > 0:
            batch = take_batch(self.prefill, room, self.max_batch_tokens)
            self.admitted.update(batch)
            if self.mixed_batches:
                batch = take_batch(self.decode, len(self.decode)) + batch
            return Decision(start=batch)
        return Decision(start=take_batch(self.decode, len(self.decode)))
