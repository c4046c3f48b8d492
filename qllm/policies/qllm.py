"""`qllm`: four queues (LS/BE x prefill/decode), strict LS priority for prompts."""

from __future__ import annotations

from collections.abc import Iterable

from qllm.batch import Batch
from qllm.policies.base import QueuePolicy
from qllm.policies.protocol import Decision
from qllm.queues import FCFSQueue, take_batch
from qllm.sequence import Sequence


class QLLMPolicy(QueuePolicy):
    """Batches of one phase at a time (unless `mixed_batches`), batch size limit B, LS before BE.

    Four queues, prompts and decodes of each class (LS, or BE promoted by aging: `promote` moves
    it to the front of its LS queue, vs BE), each first come first served. The next batch is, in
    order: (1) B LS decodes when that many wait; (2) the waiting LS prompts; (3) BE prompts while
    fewer than B sequences are active (prefilled and unfinished: queued to decode, running or
    suspended); (4) one decode batch, LS sequences first, topped up with BE ones. LS prompts keep absolute priority; decodes of both
    classes share the batch, as in continuous batching, and counting every active sequence keeps
    them within one batch of B (BE prompts wait while LS work fills it).

    Ranking: a waiting LS prompt outranks a batch without LS work, and (`prompts_first`) any batch
    without an LS prompt (a decode batch), so LS TTFT waits for at most one checkpoint of any work, at
    the cost of one prefill pass added to the preempted LS sequences' next token. A batch holding an
    LS prompt (a prompt batch, or one an LS prompt joined by catch-up merge) gives way to no prompt.

    `mixed_batches`: the BE prompts of step (3) ride in step (4)'s decode batch, one pass for both
    (vLLM's chunked prefill does the same); LS prompts still run alone. Off: one phase per batch,
    the paper's mode. `be_prefill_top_up`: BE prompts join step (2)'s LS prompts in their pass, as
    many as step (3) would admit (fewer than B active), so the pass that runs anyway carries them.
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
        self.be_prefill_top_up = be_prefill_top_up  # BE prompts join an LS prefill batch (the prototype's do)
        self.prompts_first = prompts_first
        self.mixed_batches = mixed_batches  # BE prompts join the decode batch in one pass
        # The four queues, by class (urgent: LS, or BE promoted by aging) and phase; each FCFS.
        self.ls_prefill, self.be_prefill = FCFSQueue(), FCFSQueue()
        self.ls_decode, self.be_decode = FCFSQueue(), FCFSQueue()

    @property
    def num_active(self) -> int:
        """Sequences past their prompt batch and unfinished, wherever they are."""
        return self.scheduler.num_admitted() - len(self.ls_prefill) - len(self.be_prefill)

    def queues(self):
        return self.ls_prefill, self.ls_decode, self.be_prefill, self.be_decode

    def _queue_of(self, sequence: Sequence) -> FCFSQueue:
        if sequence.is_prefill:
            return self.ls_prefill if sequence.is_urgent else self.be_prefill
        return self.ls_decode if sequence.is_urgent else self.be_decode

    def add(self, sequence: Sequence) -> None:
        self._queue_of(sequence).add(sequence)

    def promote(self, sequences: list[Sequence]) -> None:
        """Aged BE sequences, now urgent, go to the front of their phase's LS queue, oldest first."""
        for sequence in reversed(sequences):
            queue = self.be_prefill if sequence.is_prefill else self.be_decode
            queue.remove(sequence)
            self._queue_of(sequence).add_first(sequence)

    def outranking(self, batch: Batch) -> Iterable[Sequence]:
        if batch.has_urgent_prompt or (batch.is_urgent and not self.prompts_first):
            return ()
        return self.ls_prefill

    def schedule(self) -> Decision:
        urgent = self._urgent_batch()
        if urgent:
            return Decision(start=urgent)
        room = self.max_batch_size - self.num_active
        if len(self.be_prefill) and room > 0:
            prompts = self._prompts(take_batch(self.be_prefill, room, self.max_batch_tokens))
            return Decision(start=self._decode_batch() + prompts if self.mixed_batches else prompts)
        return Decision(start=self._decode_batch())

    def _urgent_batch(self) -> list[Sequence]:
        """Steps (1) and (2): B LS decodes when that many wait, else the waiting LS prompts (may be empty)."""
        if len(self.ls_decode) >= self.max_batch_size:
            return take_batch(self.ls_decode, self.max_batch_size)
        return self._ls_prefill_batch()

    def _decode_batch(self) -> list[Sequence]:
        """LS decodes first, topped up with BE decodes."""
        batch = take_batch(self.ls_decode, self.max_batch_size)
        return batch + take_batch(self.be_decode, self.max_batch_size - len(batch))

    def _ls_prefill_batch(self) -> list[Sequence]:
        batch = take_batch(self.ls_prefill, self.max_batch_size, self.max_batch_tokens)
        if batch and self.be_prefill_top_up:
            used = sum(s.num_new_tokens for s in batch)
            room = self.max_batch_size - self.num_active  # the LS prompts, taken, count as active
            batch += take_batch(self.be_prefill, room, self.max_batch_tokens - used, oversized_head=False)
        return self._prompts(batch)

    def _prompts(self, batch: list[Sequence]) -> list[Sequence]:
        """A prompt batch: its sequences are active from now on (the scheduler starts them)."""
        return batch
