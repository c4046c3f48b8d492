"""What the engine asks of an executor: a batch's forward pass (`ForwardPass`), which yields at each
checkpoint like a generator and reports, at its current checkpoint, what it holds (bytes) and what
each expert of the MoE block it is in received. `qllm.real.executor.RealExecutor` runs the model on
torch; every executor yields at the same checkpoints and reports the same things, so the scheduler,
policies and memory accounting run unchanged on any, and none of them looks inside a pass.

Catch-up merge: a catch-up pass (`Executor.catch_up`) runs a batch through a suspended pass's first
layers and hands over its rows (`CaughtUp`) instead of tokens; sent to the suspended pass at its
checkpoint (`forward_pass.send(rows)`), they join it at its next layer boundary, and the rest of
that pass runs once for both (attention per row group, the MLP half on their packed tokens). Until
they join, the pass they were sent to reports them among what it holds."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Protocol

from qllm.errors import ConfigurationError
from qllm.kv import BlockPool, SequenceKV

GRANULARITIES = ("iteration", "layer", "expert")  # where a pass yields: never, after each layer, inside layers
ATTENTION = -1  # Checkpoint.expert after a layer's attention half, before any of its experts


@dataclass(frozen=True)
class Checkpoint:
    """Where a preemptible pass stopped."""

    layer: int  # the decoder layer the pass is in (0-based)
    # None: `layer` is complete (layer granularity; at expert granularity, a dense layer's MLP).
    # ATTENTION: its attention half is done. e >= 0: its expert group ending with expert e is done
    # (e == num_experts: the shared expert); after its last group, the layer is complete.
    expert: int | None = None


class CaughtUp(Protocol):
    """Rows a catch-up pass has run through layers 0..num_layers-1, with their in-flight caches: they
    belong to the pass they are sent to (which commits or releases them), or to `release`."""

    num_layers: int

    def release(self) -> None:
        """They will join no pass: their caches end in flight, uncommitted (a closed pass's rule)."""


class PassState(Protocol):
    """What an executor records of one pass as it runs, read at the pass's current checkpoint."""

    def held_bytes(self) -> int:
        """Bytes of the tensors the pass keeps while it is set aside here (qllm.memory.storage_bytes:
        each storage once, a view counts its whole storage, model weights never)."""

    @property
    def routed_tokens(self) -> list[int] | None:
        """Tokens each routed expert (by number) received in the MoE block the pass is inside, at
        the checkpoints between its expert groups; None elsewhere."""


class ForwardPass:
    """One forward pass as the engine drives it: an iterator of checkpoints (`next`, `send`, `close`,
    as the generator `steps` it wraps; its StopIteration.value is each sequence's next token, or a
    catch-up pass's rows) that reports, through `state`, what the executor recorded at its current
    checkpoint. `send(rows)` in place of `next()` hands the pass caught-up rows (`CaughtUp`)."""

    __slots__ = ("steps", "state")

    def __init__(self, steps: Generator[Checkpoint, CaughtUp | None, list[int] | CaughtUp], state: PassState) -> None:
        self.steps = steps
        self.state = state

    def __iter__(self) -> ForwardPass:
        return self

    def __next__(self) -> Checkpoint:
        return next(self.steps)

    def send(self, value: CaughtUp | None) -> Checkpoint:
        """Go on to the next checkpoint, taking caught-up rows there (`None`: as `next`)."""
        return self.steps.send(value)

    def throw(self, *args) -> Checkpoint:
        return self.steps.throw(*args)

    def close(self) -> None:
        """End the pass early: it changes no cache (Executor.forward)."""
        self.steps.close()

    def held_bytes(self) -> int:
        return self.state.held_bytes()

    @property
    def routed_tokens(self) -> list[int] | None:
        return self.state.routed_tokens


class Executor(Protocol):
    config: object  # the model's Hugging Face config: context length, vocabulary, shape
    num_layers: int
    kv_pool: BlockPool  # the KV blocks every sequence's cache is taken from

    def new_kv(self) -> SequenceKV:
        """An empty KV cache for a new sequence."""

    def forward(self, batch: list, may_stop: Callable[[], bool] | None = None) -> ForwardPass:
        """One forward pass over the sequences of `batch`, yielding at each checkpoint; returns
        (StopIteration.value) each sequence's next token. A pass closed early changes no cache.
        At each checkpoint it reports what it holds and, inside an MoE block, what each expert
        received (`PassState`), recorded by the executor's own code as the pass runs.

        `may_stop`, asked each time the pass goes on, says whether the engine may stop it at a
        checkpoint before new work arrives; when it says no, an executor may run past checkpoints
        up to the next arrival (the simulator does; the real executor yields at every one).

        At any checkpoint the pass accepts, through `send`, `CaughtUp` rows whose `num_layers` is
        the layer after the one it is in: they join it at its next layer boundary, and its result
        then covers its own sequences followed by theirs. Until they join, what it reports holding
        includes what those rows hold (their inputs, caches' indices and hidden states)."""

    def catch_up(
        self, batch: list, num_layers: int, may_stop: Callable[[], bool] | None = None
    ) -> ForwardPass:
        """`forward` through layers 0..num_layers-1 only (0 < num_layers < the model's): the same
        checkpoints and reports, but the pass ends after its last layer (no checkpoint there) and
        returns its rows, to be sent to a pass waiting at layer `num_layers` (see `forward`)."""


def check_granularity(granularity: str, experts_per_checkpoint: int) -> None:
    if granularity not in GRANULARITIES:
        raise ConfigurationError(f"granularity {granularity!r}: expected one of {GRANULARITIES}")
    if experts_per_checkpoint < 1:
        raise ConfigurationError(f"experts_per_checkpoint must be >= 1; got {experts_per_checkpoint}")


def check_catch_up(num_layers: int, model_layers: int) -> None:
    if not 0 < num_layers < model_layers:
        raise ValueError(f"a catch-up pass runs 1 to {model_layers - 1} layers, then joins a pass; got {num_layers}")


def run_to_completion(forward_pass: ForwardPass) -> list[int]:
    """Drive a (possibly resumed) forward pass through its remaining checkpoints; return its tokens."""
    while True:
        try:
            next(forward_pass)
        except StopIteration as stop:
            return stop.value
