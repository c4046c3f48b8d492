"""What each decoder layer's attention writes to its cache, measured by calling it once.

Keys and values are not always [kv_heads, head_dim] each: DeepSeek's multi-head latent attention
caches its compressed KV ([1, kv_lora_rank]) as the keys and its rotary part ([1, qk_rope_head_dim])
as the values. Rather than read that from each family's config, the probe runs every layer's own
attention on one zero token with a cache that records the shapes `update()` receives. On the meta
device (the simulator's weight-free model) this allocates nothing.
"""

from __future__ import annotations

import torch
from transformers import Cache

from qllm.modeling import rotary
from qllm.errors import ConfigurationError
from qllm.kv import KVShape


class ShapeRecorder(Cache):
    """A cache that stores nothing: it records each layer's (key heads, key dim, value heads, value dim)."""

    def __init__(self) -> None:
        super().__init__(layers=[])
        self.shapes: dict[int, tuple[int, int, int, int]] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.shapes[layer_idx] = (*key_states.shape[1::2], *value_states.shape[1::2])  # [batch, heads, query, dim]
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length, 0


@torch.no_grad()
def probe_kv_shape(adapter) -> KVShape:
    """The KV shape every layer of `adapter` (a qllm.modeling.adapters.decoder.DecoderAdapter) writes per token."""
    device = next(adapter.parts[0].self_attn.parameters()).device
    input_ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    hidden = adapter.embed_tokens(input_ids)  # [1, 1, hidden]
    position_ids = torch.zeros(1, 1, dtype=torch.long, device=hidden.device)
    position_embeddings = rotary.position_embeddings(adapter.rotary_emb, hidden, position_ids)
    recorder = ShapeRecorder()
    for parts in adapter.parts:
        parts.self_attn(hidden_states=hidden, position_embeddings=position_embeddings, attention_mask=None,
                        position_ids=position_ids, cache=recorder)  # fmt: skip
    shapes = set(recorder.shapes.values())
    if len(recorder.shapes) != len(adapter.parts) or len(shapes) != 1:
        raise ConfigurationError(
            f"the layers' attention modules cache keys and values of shapes {recorder.shapes} (layer: key heads, key "
            f"dim, value heads, value dim); QLLM's KV pool holds one shape written by every layer"
        )
    return KVShape(len(adapter.parts), *shapes.pop())

