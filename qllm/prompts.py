"""The prompt token ids a request feeds: the trace's own, or deterministic stand-ins."""

from __future__ import annotations

import zlib

import torch

from qllm.request import Request


def rejection_reason(request: Request, config) -> str | None:
    """Why a model with this config can never serve `request`, or None: what every engine checks
    at submission, so a bad request is rejected with a reason instead of failing a batch."""
    total = request.prompt_len + request.output_len
    if total > config.max_position_embeddings:
        return (
            f"prompt ({request.prompt_len}) + output ({request.output_len}) tokens exceed "
            f"the model's context of {config.max_position_embeddings}"
        )
    vocab_size = config.vocab_size  # read once: a config attribute costs a Python call per read
    if request.prompt_ids is not None and not all(0 <= t < vocab_size for t in request.prompt_ids):
        return f"prompt_ids outside the model's vocabulary [0, {vocab_size}): tokenized for another model?"
    return None


def prompt_token_ids(request: Request, vocab_size: int) -> list[int]:
    """`request.prompt_ids` when the trace has them, else `request.prompt_len` ids drawn from a
    generator seeded by a stable hash of the request id (zlib.crc32), so every run and every
    engine feeds the same tokens for the same request."""
    if request.prompt_ids is not None:
        too_large = [token for token in request.prompt_ids if not 0 <= token < vocab_size]
        if too_large:
            raise ValueError(
                f"request {request.request_id!r}: prompt_ids holds {too_large[:5]} outside the model's "
                f"vocabulary [0, {vocab_size}); was the trace tokenized for another model?"
            )
        return list(request.prompt_ids)
    generator = torch.Generator().manual_seed(zlib.crc32(request.request_id.encode("utf-8")))
    return torch.randint(0, vocab_size, (request.prompt_len,), generator=generator).tolist()
