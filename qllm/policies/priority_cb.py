"""`priority_cb`: iteration-level priority scheduling with preemption between iterations
(vLLM `--scheduling-policy priority` style; preempted sequences keep their KV)."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from qllm.batch import Batch
from qllm.policies.protocol import Decision
from qllm.queues import PriorityQueue
from qllm.sequence import Sequence


class PriorityContinuousBatchingPolicy:
    """Like `fcfs_cb`, but waiting work is taken in priority order, and when a more urgent prompt
    waits while B sequences run, the least urgent running sequence is preempted back to waiting.
    `mixed_batches`: admitted prompts and the running sequences' decode tokens share one pass."""

    serves_preemption = False

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048, mixed_batches: bool = False):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.mixed_batches = mixed_batches
        self.waiting = PriorityQueue()  # new prompts and preempted sequences
        self.decode: list[Sequence] = []  # admitted sequences ready for their next token
        self.admitted: set[Sequence] = set()  # taken from `waiting`, not finished nor preempted back to it

    @property
    def num_running(self) -> int:
        return len(self.admitted)

    def add(self, sequence: Sequence) -> None:
        if sequence.is_prefill:
            self.waiting.add(sequence)
        else:
            self.decode.append(sequence)
            self.admitted.add(sequence)  # already there, unless its batch was dissolved (`remove`)

    def queued(self):
        return chain(self.waiting, self.decode)

    def has_queued(self) -> bool:
        return bool(len(self.waiting) or self.decode)

    def outranking(self, batch: Batch) -> Iterable[Sequence]:
        return ()

    def promote(self, sequences: list[Sequence]) -> None:
        pass  # the order here does not depend on the class

    def finished(self, sequence: Sequence) -> None:
        self.admitted.discard(sequence)

    def remove(self, sequence: Sequence) -> None:
        self.waiting.remove(sequence)
        if sequence in self.decode:
            self.decode.remove(sequence)
        self.admitted.discard(sequence)

    def schedule(self) -> Decision:
        decision = Decision(preempted=self._preempt_for_waiting())
        prefill_tokens = 0
        while len(self.waiting) and self.num_running < self.max_batch_size:
            sequence = self.waiting.peek()
            if sequence.is_prefill:
                if decision.start and prefill_tokens + sequence.num_new_tokens > self.max_batch_tokens:
                    break
                decision.start.append(sequence)
                prefill_tokens += sequence.num_new_tokens
            else:
                decision.readmitted.append(sequence)
                self.decode.append(sequence)
            self.admitted.add(self.waiting.pop())
        if not decision.start or self.mixed_batches:
            decision.start, self.decode = sorted(self.decode, key=lambda s: s.order) + decision.start, []
        return decision

    def _preempt_for_waiting(self) -> list[Sequence]:
        """Make room for waiting work that is more urgent than the least urgent running sequence."""
        preempted = []
        while len(self.waiting) and self.decode and self.num_running >= self.max_batch_size:
            victim = max(self.decode, key=lambda s: s.order)
            if victim.order <= self.waiting.peek().order:
                break
            self.decode.remove(victim)
            self.waiting.add(victim)
            self.admitted.discard(victim)
            preempted.append(victim)
        return preempted
