"""`qllm`: four queues (LS/BE x prefill/decode), strict LS priority for prompts."""

from __future__ import annotations

from itertools import chain

from qllm.batch import Batch
from qllm.policies.protocol import Decision
from qllm.queues import FCFSQueue, take_batch
from qllm.sequence import Sequence


def is_urgent(sequence: Sequence) -> bool:
    return sequence.is_urgent


def is_not_urgent(sequence: Sequence) -> bool:
    return not sequence.is_urgent


class QLLMPolicy:
    """Batches of one phase at a time (unless `mixed_batches`), batch size limit B, LS before BE.

    The queues are a prompt queue and a decode queue, each first come first served, seen per class
    (LS, or BE promoted by aging, vs BE). The next batch is, in order: (1) B LS decodes when that
    many wait; (2) the waiting LS prompts; (3) BE prompts while fewer than B sequences are active
    (prefilled and unfinished: queued to decode, running or suspended); (4) one decode batch, LS
    sequences first, topped up with BE ones. LS prompts keep absolute priority; decodes of both
    classes share the batch, as in continuous batching, and counting every active sequence keeps
    them within one batch of B (BE prompts wait while LS work fills it).

    Ranking: a waiting LS prompt outranks a batch without LS work, and (`prompts_first`) any decode
    batch, so LS TTFT waits for at most one checkpoint of any work, at the cost of one prefill pass
    added to the preempted LS sequences' next token.

    `mixed_batches`: the BE prompts of step (3) ride in step (4)'s decode batch, one pass for both
    (vLLM's chunked prefill does the same); LS prompts still run alone. Off: one phase per batch,
    the paper's mode.
    """

    serves_preemption = True

    def __init__(
        self,
        max_batch_size: int = 16,
        max_batch_tokens: int = 2048,
        be_prefill_top_up: bool = False,
        prompts_first: bool = True,
        mixed_batches: bool = False,
    ):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.be_prefill_top_up = be_prefill_top_up  # BE prompts fill an LS prefill batch (the prototype does)
        self.prompts_first = prompts_first
        self.mixed_batches = mixed_batches  # BE prompts join the decode batch in one pass
        self.prefill = FCFSQueue()
        self.decode = FCFSQueue()
        self.active: set[Sequence] = set()  # sequences past their prompt batch and unfinished, wherever they are

    @property
    def num_active(self) -> int:
        return len(self.active)

    def add(self, sequence: Sequence) -> None:
        if sequence.is_prefill:
            self.prefill.add(sequence)
        else:
            self.decode.add(sequence)
            self.active.add(sequence)  # already there, unless its batch was dissolved (`remove`)

    def queued(self):
        return chain(self.prefill, self.decode)

    def has_queued(self) -> bool:
        return bool(len(self.prefill) or len(self.decode))

    def finished(self, sequence: Sequence) -> None:
        self.active.discard(sequence)

    def remove(self, sequence: Sequence) -> None:
        for queue in (self.prefill, self.decode):
            if sequence in queue:
                queue.remove(sequence)
        self.active.discard(sequence)

    def outranks(self, sequence: Sequence, batch: Batch) -> bool:
        if not (sequence.is_urgent and sequence.is_prefill):
            return False
        return not batch.is_urgent or (self.prompts_first and not batch.is_prefill)

    def schedule(self) -> Decision:
        urgent = self._urgent_batch()
        if urgent:
            return Decision(start=urgent)
        room = self.max_batch_size - self.num_active
        if len(self.prefill) and room > 0:
            prompts = self._prompts(take_batch(self.prefill, room, self.max_batch_tokens))
            return Decision(start=self._decode_batch() + prompts if self.mixed_batches else prompts)
        return Decision(start=self._decode_batch())

    def _urgent_batch(self) -> list[Sequence]:
        """Steps (1) and (2): B LS decodes when that many wait, else the waiting LS prompts (may be empty)."""
        if sum(map(is_urgent, self.decode)) >= self.max_batch_size:
            return take_batch(self.decode, self.max_batch_size, where=is_urgent)
        return self._ls_prefill_batch()

    def _decode_batch(self) -> list[Sequence]:
        """LS decodes first, topped up with BE decodes."""
        batch = take_batch(self.decode, self.max_batch_size, where=is_urgent)
        return batch + take_batch(self.decode, self.max_batch_size - len(batch), where=is_not_urgent)

    def _ls_prefill_batch(self) -> list[Sequence]:
        batch = take_batch(self.prefill, self.max_batch_size, self.max_batch_tokens, where=is_urgent)
        if batch and self.be_prefill_top_up:
            used = sum(s.num_new_tokens for s in batch)
            room = self.max_batch_size - len(batch)
            batch += take_batch(self.prefill, room, self.max_batch_tokens - used, where=is_not_urgent,
                                oversized_head=False)  # fmt: skip
        return self._prompts(batch)

    def _prompts(self, batch: list[Sequence]) -> list[Sequence]:
        """A prompt batch: its sequences are active from now on."""
        self.active.update(batch)
        return batch
