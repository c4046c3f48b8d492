"""What the engine holds in memory: KV caches and the state of suspended forward passes.

A memory budget bounds both together. Each admitted sequence reserves the KV it will need at
its longest (prompt + output tokens), as a server without KV eviction must; a suspended batch
holds whatever tensors its forward pass's frame keeps (hidden states, residual, partial expert
sums), measured, not estimated.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from qllm.batch import Batch
from qllm.request import Request
from qllm.sequence import Sequence


def allocated_kv_bytes(sequences: Iterable[Sequence]) -> int:
    """Storage of the KV blocks these sequences live in (each block counted once)."""
    blocks = {id(s.kv.block): s.kv.block for s in sequences if s.kv.block is not None}
    return sum(block.storage.nbytes for block in blocks.values())


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
    """Reserved KV of admitted sequences, and whether one more fits beside the suspended state."""

    def __init__(self, budget_bytes: int | None, bytes_per_token: int) -> None:
        self.budget_bytes = budget_bytes  # None: unbounded
        self.bytes_per_token = bytes_per_token
        self.reserved_bytes = 0  # KV reserved by admitted, unfinished sequences

    def reservation(self, request: Request) -> int:
        return (request.prompt_len + request.output_len) * self.bytes_per_token

    def rejection_reason(self, request: Request) -> str | None:
        if self.budget_bytes is not None and self.reservation(request) > self.budget_bytes:
            return (
                f"its KV ({request.prompt_len} + {request.output_len} tokens, {self.reservation(request)} B) "
                f"can never fit the memory budget of {self.budget_bytes} B"
            )
        return None

    def fits(self, sequence: Sequence, suspended_bytes: int) -> bool:
        need = self.reserved_bytes + suspended_bytes + self.reservation(sequence.request)
        return self.budget_bytes is None or need <= self.budget_bytes

    def reserve(self, sequence: Sequence) -> None:
        self.reserved_bytes += self.reservation(sequence.request)

    def release(self, sequence: Sequence) -> None:
        self.reserved_bytes -= self.reservation(sequence.request)
