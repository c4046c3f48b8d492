"""A batch in flight: its sequences and the forward pass that may be set aside mid-way.

Catch-up merge: a batch started while another is suspended may be a catch-up (`joins`): its pass
runs only the target's first layers, then its sequences join the target (`take_in`), whose pass
takes their rows at its next quantum (`joining`) and runs the rest once for both."""

from __future__ import annotations

from dataclasses import dataclass

from qllm.executor import CaughtUp, Checkpoint, ForwardPass
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
    # A catch-up batch: the suspended batch its sequences join once its pass has run them up to that
    # batch's layer (qllm.executor.Executor.catch_up); None for a batch that runs a whole pass.
    joins: Batch | None = None
    joining: CaughtUp | None = None  # rows that caught up with this pass, sent to it at its next quantum

    @classmethod
    def of(cls, sequences: list[Sequence]) -> Batch:
        num_prompts = sum(s.is_prefill for s in sequences)
        return cls(sequences, is_prefill=num_prompts == len(sequences), is_mixed=0 < num_prompts < len(sequences),
                   num_tokens=sum(s.num_new_tokens for s in sequences))  # fmt: skip

    def take_in(self, catch_up: Batch, rows: CaughtUp) -> None:
        """`catch_up`'s sequences, run up to this (suspended) pass's layer, join it after its own: its pass
        takes their `rows` at its next quantum, and the batch is one pass for all from there."""
        merged = Batch.of(self.sequences + catch_up.sequences)
        self.sequences, self.is_prefill, self.is_mixed = merged.sequences, merged.is_prefill, merged.is_mixed
        self.num_tokens = merged.num_tokens
        self.joining = rows
        self.checkpoint = None  # no checkpoint decision before its rows are in (no pass reports them yet)

    @property
    def kind(self) -> str:
        """What the pass feeds: prompts, decode tokens, or both."""
        return "mixed" if self.is_mixed else "prefill" if self.is_prefill else "decode"

    @property
    def request_ids(self) -> tuple[str, ...]:
        return tuple(s.request_id for s in self.sequences)

    @property
    def has_urgent_prompt(self) -> bool:
        """Holds an LS prompt (or a promoted BE one): every prefill batch of urgent work, or a merged one."""
        return any(s.is_urgent and s.is_prefill for s in self.sequences)

    @property
    def is_urgent(self) -> bool:
        """Holds LS work (or BE work promoted by aging)."""
        return any(s.is_urgent for s in self.sequences)
