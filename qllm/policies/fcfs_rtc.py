"""`fcfs_rtc`, the paper's baseline: FCFS batches, each run to completion before new prompts start."""

from __future__ import annotations

from qllm.policies.base import QueuePolicy
from qllm.policies.protocol import Decision
from qllm.queues import FCFSQueue, take_batch
from qllm.sequence import Sequence


class FCFSRunToCompletionPolicy(QueuePolicy):
    """Up to B waiting prompts form a cohort; it decodes until every member has finished, and only
    then do the next prompts start. Nothing is ever preempted."""

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.prefill = FCFSQueue()
        self.cohort = FCFSQueue()  # the running cohort's unfinished sequences, ready to decode

    def add(self, sequence: Sequence) -> None:
        (self.prefill if sequence.is_prefill else self.cohort).add(sequence)

    def queues(self):
        return self.prefill, self.cohort

    def schedule(self) -> Decision:
        if len(self.cohort):
            return Decision(start=take_batch(self.cohort, len(self.cohort)))
        return Decision(start=take_batch(self.prefill, self.max_batch_size, self.max_batch_tokens))
