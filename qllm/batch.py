"""A batch in flight: its sequences and the forward pass that may be set aside mid-way."""

from __future__ import annotations

from dataclasses import dataclass

from qllm.executor import Checkpoint, ForwardPass
from qllm.sequence import Sequence


@dataclass(eq=False)
class Batch:
    sequences: list[Sequence]
    is_prefill: bool  # every sequence feeds its prompt (no decode rows)
    is_mixed: bool  # prompts and decode tokens in one pass (a policy's `mixed_batches`)
    num_tokens: int  # tokens the pass feeds to the model
    # The executor's pass, started at the batch's first quantum; it keeps its own state while suspended
    # and reports how many bytes that is (ForwardPass.held_bytes).
    forward_pass: ForwardPass | None = None
    checkpoint: Checkpoint | None = None  # where the pass last paused; None before its first quantum
    is_resuming: bool = False  # the next quantum continues a preempted pass
    run_s: float = 0.0  # compute time spent on this pass so far, suspensions excluded
    suspended_bytes: int = 0  # tensors its pass keeps while set aside (reported by the executor when suspended)

    @classmethod
    def of(cls, sequences: list[Sequence]) -> Batch:
        num_prompts = sum(s.is_prefill for s in sequences)
        return cls(sequences, is_prefill=num_prompts == len(sequences), is_mixed=0 < num_prompts < len(sequences),
                   num_tokens=sum(s.num_new_tokens for s in sequences))  # fmt: skip

    @property
    def kind(self) -> str:
        """What the pass feeds: prompts, decode tokens, or both."""
        return "mixed" if self.is_mixed else "prefill" if self.is_prefill else "decode"

    @property
    def request_ids(self) -> tuple[str, ...]:
        return tuple(s.request_id for s in self.sequences)

    @property
    def is_urgent(self) -> bool:
        """Holds LS work (or BE work promoted by aging)."""
        return any(s.is_urgent for s in self.sequences)
