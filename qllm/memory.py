"""What the engine holds in memory: KV blocks and the state of suspended forward passes.

A memory budget bounds both together, at every instant. Each admitted sequence reserves the KV
blocks it will need at its longest (prompt + output tokens), as a server without KV eviction
must, and takes them from the pool as it grows, so the KV allocated never exceeds the KV
reserved. A suspended batch holds whatever tensors its forward pass's frame keeps (hidden states,
residual, partial expert sums), measured, not estimated; a preemption whose state would not fit
beside the reservations is not taken. So reserved + suspended <= budget bounds allocated +
suspended.
"""

from __future__ import annotations

import torch

from qllm.batch import Batch
from qllm.kv import BlockPool
from qllm.request import Request
from qllm.sequence import Sequence


def suspended_bytes(batch: Batch) -> int:
    """Bytes of the tensors a suspended pass keeps alive: its generator frames' locals, and the
    tensors held by objects there (an expert-by-expert MoE run's partial sums, say). Model
    weights are not state; views count their whole storage, once."""
    storages = {}
    generator = batch.forward_pass
    while generator is not None and generator.gi_frame is not None:
        for value in generator.gi_frame.f_locals.values():
            for tensor in _held_tensors(value, depth=1):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        generator = generator.gi_yieldfrom
    return sum(storages.values())


def _held_tensors(value, depth: int):
    if isinstance(value, torch.nn.Parameter) or isinstance(value, torch.nn.Module):
        return
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _held_tensors(item, depth)
    elif depth > 0 and hasattr(value, "__dict__"):
        for item in vars(value).values():
            yield from _held_tensors(item, depth - 1)


class MemoryBudget:
    """KV reserved by admitted sequences, and whether one more sequence, or one more suspended pass, fits."""

    def __init__(self, budget_bytes: int | None, pool: BlockPool) -> None:
        self.budget_bytes = budget_bytes  # None: unbounded
        self.pool = pool
        self.reserved_bytes = 0  # KV reserved by admitted, unfinished sequences

    def reservation(self, request: Request) -> int:
        """The blocks of the request's longest KV (prompt + output tokens), in bytes."""
        return self.pool.blocks_for(request.prompt_len + request.output_len) * self.pool.block_bytes

    def rejection_reason(self, request: Request) -> str | None:
        if self.budget_bytes is not None and self.reservation(request) > self.budget_bytes:
            return (
                f"its KV ({request.prompt_len} + {request.output_len} tokens, {self.reservation(request)} B) "
                f"can never fit the memory budget of {self.budget_bytes} B"
            )
        return None

    def fits(self, num_bytes: int, suspended_bytes: int) -> bool:
        """`num_bytes` more (a reservation, or a pass to suspend) fit beside the reservations and suspended state."""
        return self.budget_bytes is None or self.reserved_bytes + suspended_bytes + num_bytes <= self.budget_bytes

    def reserve(self, sequence: Sequence) -> None:
        self.reserved_bytes += self.reservation(sequence.request)

    def release(self, sequence: Sequence) -> None:
        self.reserved_bytes -= self.reservation(sequence.request)
