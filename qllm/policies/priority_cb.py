"""`priority_cb`: iteration-level priority scheduling with preemption between iterations
(vLLM `--scheduling-policy priority` style; preempted sequences keep their KV)."""

from __future__ import annotations

import heapq

from qllm.batch import Batch
from qllm.policies.protocol import Decision
from qllm.sequence import Sequence


class PriorityContinuousBatchingPolicy:
    """Like `fcfs_cb`, but waiting work is taken in priority order, and when a more urgent prompt
    waits while B sequences run, the least urgent running sequence is preempted back to waiting."""

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.queue: list[tuple[tuple, Sequence]] = []  # heap: new prompts and preempted sequences
        self.decode: list[Sequence] = []  # admitted sequences ready for their next token
        self.num_running = 0  # admitted and not finished

    def add(self, sequence: Sequence) -> None:
        if sequence.is_prefill:
            heapq.heappush(self.queue, (sequence.order, sequence))
        else:
            self.decode.append(sequence)

    def has_waiting(self) -> bool:
        return bool(self.queue or self.decode)

    def waiting(self, now_s: float) -> list[Sequence]:
        return [sequence for _, sequence in self.queue] + self.decode

    def finished(self, sequence: Sequence) -> None:
        self.num_running -= 1

    def schedule(self, suspended: list[Batch], now_s: float) -> Decision:
        decision = Decision(preempted=self._preempt_for_waiting())
        prefill_tokens = 0
        while self.queue and self.num_running < self.max_batch_size:
            sequence = self.queue[0][1]
            if sequence.is_prefill:
                if decision.start and prefill_tokens + sequence.num_new_tokens > self.max_batch_tokens:
                    break
                decision.start.append(sequence)
                prefill_tokens += sequence.num_new_tokens
            else:
                decision.readmitted.append(sequence)
                self.decode.append(sequence)
            heapq.heappop(self.queue)
            self.num_running += 1
        if not decision.start:
            decision.start, self.decode = sorted(self.decode, key=lambda s: s.order), []
        return decision

    def _preempt_for_waiting(self) -> list[Sequence]:
        """Make room for waiting work that is more urgent than the least urgent running sequence."""
        preempted = []
        while self.queue and self.decode and self.num_running >= self.max_batch_size:
            victim = max(self.decode, key=lambda s: s.order)
            if victim.order <= self.queue[0][0]:
                break
            self.decode.remove(victim)
            heapq.heappush(self.queue, (victim.order, victim))
            self.num_running -= 1
            preempted.append(victim)
        return preempted
