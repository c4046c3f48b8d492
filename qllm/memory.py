"""What the engine holds in memory: KV blocks and the state of suspended forward passes.

A memory budget bounds both together, at every instant. Each admitted sequence reserves the KV
blocks it will need at its longest (prompt + output tokens), as a server without KV eviction
must, and takes them from the pool as it grows, so the KV allocated never exceeds the KV
reserved. A suspended batch holds the tensors its executor reports for the pass at that
checkpoint (`ForwardPass.held_bytes`: hidden states, packed tokens, an MoE block's routing and
partial sums; measured by `storage_bytes` on the real executor, estimated from shapes by the
simulator, qllm.sim.held); a preemption whose state would not fit beside the reservations is not
taken. So reserved + suspended <= budget bounds allocated + suspended.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from qllm.kv import BlockPool
from qllm.request import Request
from qllm.sequence import Sequence


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind `tensors`, each storage once: a view counts its whole storage."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


class HeldTensors:
    """What a real pass keeps (qllm.executor.PassState), recorded by the executor's own code as it
    runs: for each part of the pass (its inputs, the residual stream, a layer's packed tokens, an MoE
    block's run), the tensors it keeps now, or objects that list theirs (`held_tensors()`, read when
    measured). A part is replaced when the pass rebinds it and dropped when the pass lets it go."""

    def __init__(self) -> None:
        self.parts: dict[str, tuple] = {}
        self.routed_tokens: list[int] | None = None  # set while the pass is inside an MoE block

    def hold(self, part: str, *held) -> None:
        """`part` of the pass keeps `held` now: tensors, or objects with `held_tensors()`."""
        self.parts[part] = held

    def drop(self, part: str) -> None:
        self.parts.pop(part, None)

    def clear(self) -> None:
        """The pass ended: it keeps nothing."""
        self.parts.clear()
        self.routed_tokens = None

    def tensors(self) -> list[torch.Tensor]:
        return [tensor for held in self.parts.values() for item in held
                for tensor in ([item] if isinstance(item, torch.Tensor) else item.held_tensors())]  # fmt: skip

    def held_bytes(self) -> int:
        return storage_bytes(self.tensors())


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
