"""`qllm_prototype`: the authors' prototype's batch order, kept to compare with `qllm`."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from qllm.batch import Batch
from qllm.policies.protocol import Decision
from qllm.policies.qllm import QLLMPolicy
from qllm.queues import take_batch
from qllm.sequence import Sequence


class QLLMPrototypePolicy(QLLMPolicy):
    """The prototype's order: (1) a full LS-decode batch when at least B LS sequences wait to
    decode; else (2) the waiting LS prompts; else (3) the LS decodes, topped up with BE decodes;
    then (4) BE decodes; else (5) BE prompts. Any waiting LS work outranks a batch without LS
    work, so LS decodes preempt BE work too, and a suspended BE batch resumes after (3).

    A BE prompt waits until no sequence is decoding: under a steady LS stream BE prompts starve,
    and BE batches shrink as they drain (docs/reproducing.md measures what that costs).
    """

    def outranking(self, batch: Batch) -> Iterable[Sequence]:
        return () if batch.is_urgent else chain(self.ls_prefill, self.ls_decode)

    def schedule(self) -> Decision:
        urgent = self._urgent_batch()
        if urgent:
            return Decision(start=urgent)
        if len(self.ls_decode) or len(self.be_decode):  # (3), (4): LS decodes topped up with BE ones, or BE ones alone
            return Decision(start=self._decode_batch())
        return Decision(start=self._prompts(take_batch(self.be_prefill, self.max_batch_size, self.max_batch_tokens)))
