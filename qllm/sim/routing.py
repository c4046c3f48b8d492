"""Which experts receive tokens in a simulated pass: drawn, since no router runs.

Each token goes to `top_k` distinct experts of `num_experts`, every set of experts equally likely,
independently per token and per layer, from a seeded generator: a random-weight router spreads
tokens about this evenly, so expert groups and their count vary as the real model's do (a trained
router's skew is not modelled). Padded query slots are routed too, as in the real executor.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

MAX_SUBSETS = 4096  # draw counts per set of experts up to this many sets; beyond, draw token by token


class UniformRouting:
    def __init__(self, num_experts: int, top_k: int, seed: int = 0) -> None:
        self.num_experts = num_experts
        self.top_k = top_k
        self.rng = np.random.default_rng(seed)
        # Each token picks one of the C(E, k) expert sets uniformly: the tokens per set are multinomial,
        # and an expert's tokens are the sum over the sets holding it (exact, and O(sets), not O(tokens)).
        num_sets = math.comb(num_experts, top_k)
        self.incidence = None  # [sets, experts]: 1 where the set holds the expert
        if num_sets <= MAX_SUBSETS:
            self.incidence = np.zeros((num_sets, num_experts), dtype=np.int64)
            for row, experts in enumerate(itertools.combinations(range(num_experts), top_k)):
                self.incidence[row, list(experts)] = 1

    def tokens_per_expert(self, num_layers: int, num_tokens: int) -> np.ndarray:
        """Tokens routed to each expert of each layer: [num_layers, num_experts], each row summing to
        num_tokens * top_k."""
        if self.incidence is not None:
            num_sets = len(self.incidence)
            if num_tokens <= num_sets:  # few tokens (decode): draw each token's set
                draws = self.rng.integers(num_sets, size=(num_layers, num_tokens))
                draws += num_sets * np.arange(num_layers)[:, None]  # each layer's sets apart
                per_set = np.bincount(draws.ravel(), minlength=num_layers * num_sets).reshape(num_layers, num_sets)
            else:
                per_set = self.rng.multinomial(num_tokens, np.full(num_sets, 1.0 / num_sets), size=num_layers)
            return per_set @ self.incidence
        keys = self.rng.random((num_layers, num_tokens, self.num_experts))
        chosen = np.argpartition(keys, self.top_k - 1, axis=2)[:, :, : self.top_k]  # [layers, tokens, k]
        layer_offsets = (np.arange(num_layers) * self.num_experts)[:, None, None]
        counts = np.bincount((chosen + layer_offsets).ravel(), minlength=num_layers * self.num_experts)
        return counts.reshape(num_layers, self.num_experts)
