"""KV accounting in the simulator: what the engine reads of a sequence's cache, with no tensors.

The engine and the memory module read a cache's committed tokens (`num_tokens`), free it when the
sequence finishes, and count the storage its block holds (`block.storage.nbytes`). The real
storage (qllm.kv) keeps each sequence in a row of a block whose capacity grows geometrically
(`capacity_for`); here every sequence has a block of its own grown by the same rule, which counts
the same bytes as long as blocks are not shared (the real executor shares one between the
sequences of a batch that stays together, which this ignores).
"""

from __future__ import annotations

from dataclasses import dataclass

from qllm.kv import capacity_for


@dataclass(frozen=True)
class Storage:
    nbytes: int


@dataclass(frozen=True)
class SimulatedBlock:
    storage: Storage
    capacity: int  # tokens


class SimulatedKV:
    """One sequence's cache: committed tokens, and the block that would hold them."""

    def __init__(self, bytes_per_token: int) -> None:
        self.bytes_per_token = bytes_per_token  # keys and values of one token, every layer
        self.num_tokens = 0  # committed tokens
        self.block: SimulatedBlock | None = None  # None before the first pass commits
        self.is_in_flight = False  # part of a pass that has neither committed nor been abandoned

    def commit(self, num_new_tokens: int) -> None:
        """The pass that fed `num_new_tokens` completed: they are part of the cache from now on."""
        self.num_tokens += num_new_tokens
        if self.block is None or self.block.capacity < self.num_tokens:
            capacity = capacity_for(self.num_tokens)
            self.block = SimulatedBlock(Storage(capacity * self.bytes_per_token), capacity)

    def free(self) -> None:
        if self.is_in_flight:
            raise RuntimeError("cannot free the KV cache of a sequence in an unfinished forward pass")
        self.block, self.num_tokens = None, 0
