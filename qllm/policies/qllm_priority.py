"""`qllm`: four queues (LS/BE x prefill/decode), strict LS priority, preemption inside a forward pass."""

from __future__ import annotations

from collections import deque

from qllm.batch import Batch
from qllm.policies.protocol import Decision, take_prefills
from qllm.sequence import Sequence


class QLLMPolicy:
    """The authors' batch order, one phase per batch, batch size limit B:

    (1) a full LS-decode batch when at least B LS sequences wait to decode; else (2) the waiting
    LS prefills; else (3) the LS decodes, topped up with BE decodes; then a suspended BE batch
    resumes before any new BE work; else (4) BE decodes; else (5) BE prefills. At a checkpoint
    of a batch holding no LS sequence, if any LS work waits, the batch is preempted.
    """

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048, be_prefill_top_up: bool = False):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.be_prefill_top_up = be_prefill_top_up  # the prototype lets BE prompts fill an LS prefill batch
        self.ls_prefill: deque[Sequence] = deque()
        self.ls_decode: deque[Sequence] = deque()
        self.be_prefill: deque[Sequence] = deque()
        self.be_decode: deque[Sequence] = deque()

    def add(self, sequence: Sequence) -> None:
        if sequence.is_latency_sensitive:
            queue = self.ls_prefill if sequence.is_prefill else self.ls_decode
        else:
            queue = self.be_prefill if sequence.is_prefill else self.be_decode
        queue.append(sequence)

    def has_ls_waiting(self) -> bool:
        return bool(self.ls_prefill or self.ls_decode)

    def has_waiting(self) -> bool:
        return bool(self.has_ls_waiting() or self.be_prefill or self.be_decode)

    def finished(self, sequence: Sequence) -> None:
        pass

    def should_preempt(self, running: Batch) -> bool:
        return not running.has_latency_sensitive and self.has_ls_waiting()

    def schedule(self, suspended: list[Batch]) -> Decision:
        size = self.max_batch_size
        if len(self.ls_decode) >= size:
            return Decision(start=self._pop(self.ls_decode, size))
        if self.ls_prefill:
            batch = take_prefills(self.ls_prefill, size, self.max_batch_tokens)
            if self.be_prefill_top_up:
                used = sum(s.num_new_tokens for s in batch)
                batch += take_prefills(
                    self.be_prefill, size - len(batch), self.max_batch_tokens - used, oversized_head=False
                )
            return Decision(start=batch)
        if self.ls_decode:
            batch = self._pop(self.ls_decode, size)
            return Decision(start=batch + self._pop(self.be_decode, size - len(batch)))
        if suspended:
            return Decision(resume=suspended[0])
        if self.be_decode:
            return Decision(start=self._pop(self.be_decode, size))
        return Decision(start=take_prefills(self.be_prefill, size, self.max_batch_tokens))

    @staticmethod
    def _pop(queue: deque[Sequence], count: int) -> list[Sequence]:
        return [queue.popleft() for _ in range(min(count, len(queue)))]
