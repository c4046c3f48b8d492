"""`qllm`: four queues (LS/BE x prefill/decode), strict LS priority, optional BE aging."""

from __future__ import annotations

from collections import deque

from qllm.batch import Batch
from qllm.policies.protocol import Decision, take_prefills
from qllm.sequence import Sequence


class QLLMPolicy:
    """Batches of one phase at a time, batch size limit B, LS before BE.

    With `prototype_order` (the authors' prototype): (1) a full LS-decode batch when at least B
    LS sequences wait to decode; else (2) the waiting LS prompts; else (3) the LS decodes, topped
    up with BE decodes; then a suspended BE batch resumes; else (4) BE decodes; else (5) BE
    prompts. A BE prompt then waits until no LS sequence and no BE sequence is decoding: under a
    steady LS stream BE prompts starve, and BE batches shrink as they drain (measured: 0.88x the
    throughput of FCFS continuous batching on the default trace, BE TTFT over a second).

    The default keeps (1) and (2), then resumes a suspended batch, then (3') admits BE prompts
    while fewer than B sequences are decoding, else (4') runs one decode batch, LS sequences
    first, topped up with BE ones. LS prompts keep absolute priority; decodes of both classes
    share the batch, as in continuous batching. Whether a running batch is preempted for LS
    work is the engine's checkpoint policy's call.

    With `be_aging_s`, a BE sequence that has waited longer than that for its next pass, or a
    suspended batch set aside for longer, is served as LS from then on: the starvation bound
    the paper leaves as future work. Promotion happens at the next scheduling decision, so a BE
    wait is bounded by `be_aging_s` plus the urgent work ahead of it (at least the LS pass
    running when the bound passes). The prototype has no aging (None).
    """

    def __init__(
        self,
        max_batch_size: int = 16,
        max_batch_tokens: int = 2048,
        be_prefill_top_up: bool = False,
        be_aging_s: float | None = None,
        prototype_order: bool = False,
    ):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.be_prefill_top_up = be_prefill_top_up  # the prototype lets BE prompts fill an LS prefill batch
        self.be_aging_s = be_aging_s
        self.prototype_order = prototype_order
        self.ls_prefill: deque[Sequence] = deque()  # LS and promoted BE sequences
        self.ls_decode: deque[Sequence] = deque()
        self.be_prefill: deque[Sequence] = deque()
        self.be_decode: deque[Sequence] = deque()

    def add(self, sequence: Sequence) -> None:
        if sequence.is_urgent:
            queue = self.ls_prefill if sequence.is_prefill else self.ls_decode
        else:
            queue = self.be_prefill if sequence.is_prefill else self.be_decode
        queue.append(sequence)

    def has_waiting(self) -> bool:
        return bool(self.ls_prefill or self.ls_decode or self.be_prefill or self.be_decode)

    def waiting(self, now_s: float) -> list[Sequence]:
        self._promote_aged(now_s)
        return [*self.ls_prefill, *self.ls_decode, *self.be_prefill, *self.be_decode]

    def finished(self, sequence: Sequence) -> None:
        pass

    def schedule(self, suspended: list[Batch], now_s: float) -> Decision:
        self._promote_aged(now_s)
        aged = [b for b in suspended if self._has_aged(now_s - b.suspended_s)]
        if aged:
            for sequence in aged[0].sequences:
                sequence.is_promoted = True
            return Decision(resume=aged[0])
        if len(self.ls_decode) >= self.max_batch_size:
            return Decision(start=self._pop(self.ls_decode, self.max_batch_size))
        if self.ls_prefill:
            return Decision(start=self._ls_prefill_batch())
        if self.prototype_order:
            return self._prototype_rest(suspended)
        if suspended:
            return Decision(resume=suspended[0])
        room = self.max_batch_size - len(self.ls_decode) - len(self.be_decode)
        if self.be_prefill and room > 0:
            return Decision(start=take_prefills(self.be_prefill, room, self.max_batch_tokens))
        return Decision(start=self._decode_batch())

    def _prototype_rest(self, suspended: list[Batch]) -> Decision:
        """Steps (3) to (5) of the authors' order."""
        if self.ls_decode:
            return Decision(start=self._decode_batch())
        if suspended:
            return Decision(resume=suspended[0])
        if self.be_decode:
            return Decision(start=self._decode_batch())
        return Decision(start=take_prefills(self.be_prefill, self.max_batch_size, self.max_batch_tokens))

    def _decode_batch(self) -> list[Sequence]:
        """LS decodes first, topped up with BE decodes."""
        batch = self._pop(self.ls_decode, self.max_batch_size)
        return batch + self._pop(self.be_decode, self.max_batch_size - len(batch))

    def _ls_prefill_batch(self) -> list[Sequence]:
        batch = take_prefills(self.ls_prefill, self.max_batch_size, self.max_batch_tokens)
        if self.be_prefill_top_up:
            used = sum(s.num_new_tokens for s in batch)
            room = self.max_batch_size - len(batch)
            batch += take_prefills(self.be_prefill, room, self.max_batch_tokens - used, oversized_head=False)
        return batch

    def _has_aged(self, waited_s: float) -> bool:
        return self.be_aging_s is not None and waited_s > self.be_aging_s

    def _promote_aged(self, now_s: float) -> None:
        """Move BE sequences waiting longer than the bound to the LS queues, oldest first."""
        for source, target in ((self.be_prefill, self.ls_prefill), (self.be_decode, self.ls_decode)):
            while source and self._has_aged(now_s - source[0].ready_s):
                sequence = source.popleft()
                sequence.is_promoted = True
                target.append(sequence)

    @staticmethod
    def _pop(queue: deque[Sequence], count: int) -> list[Sequence]:
        return [queue.popleft() for _ in range(min(count, len(queue)))]
