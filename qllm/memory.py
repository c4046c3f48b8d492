"""What the engine holds in memory: KV caches and the state of suspended forward passes.

A memory budget bounds both together. Each admitted sequence reserves the KV it will need at
its longest (prompt + output tokens), as a server without KV eviction must; a suspended batch
holds whatever tensors its forward pass's frame keeps (hidden states, residual, partial expert
sums), measured, not estimated.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import torch

from harness.request import Request
from qllm.batch import Batch
from qllm.sequence import Sequence


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Keys and values of one token across every decoder layer."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.empty((), dtype=dtype).element_size()
    return config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * element


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
    """Admits waiting sequences, most urgent first, while reserved KV plus suspended state fits."""

    def __init__(self, budget_bytes: int | None, bytes_per_token: int) -> None:
        self.budget_bytes = budget_bytes  # None: unbounded
        self.bytes_per_token = bytes_per_token
        self.reserved_bytes = 0  # KV reserved by admitted, unfinished sequences
        self.pending: list[tuple[tuple, Sequence]] = []  # heap by Sequence.order

    def reservation(self, request: Request) -> int:
        return (request.prompt_len + request.output_len) * self.bytes_per_token

    def rejection_reason(self, request: Request) -> str | None:
        if self.budget_bytes is not None and self.reservation(request) > self.budget_bytes:
            return (
                f"its KV ({request.prompt_len} + {request.output_len} tokens, {self.reservation(request)} B) "
                f"can never fit the memory budget of {self.budget_bytes} B"
            )
        return None

    def wait(self, sequence: Sequence) -> None:
        heapq.heappush(self.pending, (sequence.order, sequence))

    def admit(self, suspended_bytes: int) -> list[Sequence]:
        """Pending sequences that fit now, in priority order; the head blocks those behind it."""
        admitted = []
        while self.pending:
            sequence = self.pending[0][1]
            need = self.reserved_bytes + suspended_bytes + self.reservation(sequence.request)
            if self.budget_bytes is not None and need > self.budget_bytes:
                break
            heapq.heappop(self.pending)
            self.reserved_bytes += self.reservation(sequence.request)
            admitted.append(sequence)
        return admitted

    def release(self, sequence: Sequence) -> None:
        self.reserved_bytes -= self.reservation(sequence.request)
