"""Arrival processes and LS/BE class assignment for traces.

Generated arrivals follow vLLM's benchmark client: the first request arrives at 0 s and each
later one one inter-arrival gap after the previous one. Gaps are Gamma distributed with
shape = burstiness and scale = 1 / (rate * burstiness), so the mean gap is 1 / rate whatever
the burstiness; burstiness 1 is a Poisson process, below 1 is burstier, above 1 smoother
(the gaps' coefficient of variation is 1 / sqrt(burstiness)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qllm.errors import ConfigurationError
from qllm.request import BE, LS

Seed = int | Sequence[int]  # anything numpy.random.default_rng accepts as entropy


def source_arrivals(arrival_s: Sequence[float] | np.ndarray, time_scale: float = 1.0) -> np.ndarray:
    """A source's own timestamps, shifted to start at 0 and multiplied by `time_scale`.

    time_scale 0.5 replays the trace twice as fast (twice the rate), 2.0 half as fast.
    """
    if not time_scale > 0 or not np.isfinite(time_scale):
        raise ConfigurationError(f"trace.time_scale must be a finite number > 0, got {time_scale!r}")
    arrivals = np.asarray(arrival_s, dtype="float64")
    if len(arrivals) == 0:
        return arrivals
    return (arrivals - arrivals[0]) * time_scale


def gamma_arrivals(num_requests: int, rate: float, burstiness: float = 1.0, seed: Seed = 0) -> np.ndarray:
    """Arrival times (s) of `num_requests` requests at `rate` req/s with Gamma gaps (see module doc)."""
    if not rate > 0 or not np.isfinite(rate):
        raise ConfigurationError(f"trace.rate must be a finite number of requests per second > 0, got {rate!r}")
    if not burstiness > 0 or not np.isfinite(burstiness):
        raise ConfigurationError(f"trace.burstiness must be a finite number > 0 (1 = Poisson), got {burstiness!r}")
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=max(num_requests - 1, 0))
    return np.concatenate([[0.0], np.cumsum(gaps)])[:num_requests]


def poisson_arrivals(num_requests: int, rate: float, seed: Seed = 0) -> np.ndarray:
    """Poisson arrivals at `rate` req/s: Gamma with burstiness 1, so the two give the same trace."""
    return gamma_arrivals(num_requests, rate, burstiness=1.0, seed=seed)


def assign_classes(num_requests: int, ls_fraction: float, seed: Seed = 0) -> np.ndarray:
    """LS/BE labels: exactly round(num_requests * ls_fraction) LS, placed by a seeded permutation."""
    if not 0.0 <= ls_fraction <= 1.0:
        raise ValueError(f"ls_fraction must be within [0, 1], got {ls_fraction!r}")
    num_ls = int(round(num_requests * ls_fraction))
    labels = np.full(num_requests, BE, dtype=object)
    labels[np.random.default_rng(seed).permutation(num_requests)[:num_ls]] = LS
    return labels
