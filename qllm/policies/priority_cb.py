"""`priority_cb`: iteration-level priority scheduling with preemption between iterations
(vLLM `--scheduling-policy priority` style; preempted sequences keep their KV)."""

from __future__ import annotations

from qllm.policies.base import QueuePolicy
from qllm.policies.protocol import Decision
from qllm.queues import PriorityQueue
from qllm.sequence import Sequence


class PriorityContinuousBatchingPolicy(QueuePolicy):
    """Like `fcfs_cb`, but waiting work is taken in priority order, and when a more urgent prompt
    waits while B sequences run, the least urgent running sequence is preempted back to waiting.
    `mixed_batches`: admitted prompts and the running sequences' decode tokens share one pass."""

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048, mixed_batches: bool = False):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.mixed_batches = mixed_batches
        self.waiting = PriorityQueue()  # new prompts and preempted sequences
        self.decode: list[Sequence] = []  # admitted sequences ready for their next token

    def _num_admitted(self) -> int:
        """Started and unfinished, less those preempted back to `waiting`: every admitted sequence but
        those `waiting` holds (its prompts and the preempted alike)."""
        return self.scheduler.num_admitted() - len(self.waiting)

    def queues(self):
        return self.waiting, self.decode

    def add(self, sequence: Sequence) -> None:
        if sequence.is_prefill:
            self.waiting.add(sequence)
        else:
            self.decode.append(sequence)

    def schedule(self) -> Decision:
        num_running = self._num_admitted()
        decision = Decision(preempted=self._preempt_for_waiting(num_running))
        num_running -= len(decision.preempted)
        prefill_tokens = 0
        while len(self.waiting) and num_running < self.max_batch_size:
            sequence = self.waiting.peek()
            if sequence.is_prefill:
                if decision.start and prefill_tokens + sequence.num_new_tokens > self.max_batch_tokens:
                    break
                decision.start.append(sequence)
                prefill_tokens += sequence.num_new_tokens
            else:
                decision.readmitted.append(sequence)
                self.decode.append(sequence)
            self.waiting.pop()
            num_running += 1
        if not decision.start or self.mixed_batches:
            decision.start, self.decode = sorted(self.decode, key=lambda s: s.order) + decision.start, []
        return decision

    def _preempt_for_waiting(self, num_running: int) -> list[Sequence]:
        """Make room for waiting work that is more urgent than the least urgent running sequence."""
        preempted = []
        while len(self.waiting) and self.decode and num_running - len(preempted) >= self.max_batch_size:
            victim = max(self.decode, key=lambda s: s.order)
            if victim.order <= self.waiting.peek().order:
                break
            self.decode.remove(victim)
            self.waiting.add(victim)
            preempted.append(victim)
        return preempted
