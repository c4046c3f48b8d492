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
POOL_SIZE = 1 << 16  # per-token set draws made at once: a decode pass takes layers x tokens of them


def expected_experts(num_experts: int, top_k: int, tokens) -> np.ndarray:
    """The experts `tokens` tokens reach on average when each picks its `top_k` as UniformRouting draws
    them: a token misses a given expert with probability 1 - k / E."""
    return num_experts * (1 - (1 - top_k / num_experts) ** np.asarray(tokens, dtype=float))


class UniformRouting:
    def __init__(self, num_experts: int, top_k: int, seed: int = 0) -> None:
        self.num_experts = num_experts
        self.top_k = top_k
        self.rng = np.random.default_rng(seed)
        # Each token picks one of the C(E, k) expert sets uniformly; an expert's tokens are the sum
        # over the sets holding it. Few tokens: each token's set is drawn (from a pool drawn ahead);
        # many: the tokens per set are multinomial (O(sets), not O(tokens)). Both exact.
        self.num_sets = math.comb(num_experts, top_k)
        self.incidence = None  # [sets, experts]: 1.0 where the set holds the expert (float: a BLAS matmul)
        if self.num_sets <= MAX_SUBSETS:
            self.incidence = np.zeros((self.num_sets, num_experts))
            for row, experts in enumerate(itertools.combinations(range(num_experts), top_k)):
                self.incidence[row, list(experts)] = 1.0
        self.pool, self.pool_used = np.zeros(0, dtype=np.int64), 0

    def tokens_per_expert(self, num_layers: int, num_tokens: int) -> np.ndarray:
        """Tokens routed to each expert of each layer: [num_layers, num_experts], each row summing to
        num_tokens * top_k."""
        if self.incidence is None:
            return self._token_by_token(num_layers, num_tokens)
        if num_tokens <= self.num_sets:  # few tokens (decode): each token's set
            draws = self._set_draws(num_layers * num_tokens).reshape(num_layers, num_tokens)
            draws = draws + self.num_sets * np.arange(num_layers)[:, None]  # each layer's sets apart
            per_set = np.bincount(draws.ravel(), minlength=num_layers * self.num_sets).reshape(num_layers, -1)
        else:
            per_set = self.rng.multinomial(num_tokens, np.full(self.num_sets, 1.0 / self.num_sets), size=num_layers)
        return (per_set @ self.incidence).astype(np.int64)

    def _set_draws(self, count: int) -> np.ndarray:
        """`count` uniform draws of a set index, taken in order from a pool drawn ahead."""
        if self.pool_used + count > len(self.pool):
            self.pool, self.pool_used = self.rng.integers(self.num_sets, size=max(POOL_SIZE, count)), 0
        self.pool_used += count
        return self.pool[self.pool_used - count : self.pool_used]

    def _token_by_token(self, num_layers: int, num_tokens: int) -> np.ndarray:
        keys = self.rng.random((num_layers, num_tokens, self.num_experts))
        chosen = np.argpartition(keys, self.top_k - 1, axis=2)[:, :, : self.top_k]  # [layers, tokens, k]
        layer_offsets = (np.arange(num_layers) * self.num_experts)[:, None, None]
        counts = np.bincount((chosen + layer_offsets).ravel(), minlength=num_layers * self.num_experts)
        return counts.reshape(num_layers, self.num_experts)
