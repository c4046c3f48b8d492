"""A model's memory without its weights: bytes per part, KV per token, KV tokens that fit on a GPU.

The model is built on the meta device with its quantization applied (qllm.modeling.nf4_model for `bnb4`),
so the byte counts are the tensors `load_model` would allocate: nothing is downloaded and nothing
is allocated. A `Linear4bit` on the meta device still holds its unquantized weight; it is counted
as the NF4 weight it becomes (half a byte per value plus a float32 absmax per 64 values).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from bitsandbytes.nn import Params4bit
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from qllm.modeling.kernels.nf4_experts import nf4_bytes
from qllm.modeling.adapters import adapter_for
from qllm.modeling.models import DTYPES, eager_meta_model, load_config
from qllm.modeling.nf4_model import build_nf4_model

GIB = 2**30
PARTS = ("embeddings", "attention", "routed experts", "shared experts", "other", "LM head")
PART_OF = (  # (a name fragment, its part), first match wins; "other": norms, routers, dense MLPs
    ("embed_tokens", "embeddings"),
    ("lm_head", "LM head"),
    ("self_attn", "attention"),
    ("shared_expert", "shared experts"),
    ("shared_mlp", "shared experts"),
    (".experts.", "routed experts"),
)


@dataclass(frozen=True)
class MemoryPlan:
    part_bytes: dict[str, int]  # PARTS -> bytes
    kv_bytes_per_token: int
    gpu_bytes: int

    @property
    def weight_bytes(self) -> int:
        return sum(self.part_bytes.values())

    @property
    def kv_tokens(self) -> int:
        """KV tokens the GPU holds after the weights (nothing kept aside for activations)."""
        return max(0, self.gpu_bytes - self.weight_bytes) // self.kv_bytes_per_token

    def lines(self) -> list[str]:
        parts = [f"{part:<15} {self.part_bytes[part] / GIB:8.3f} GiB" for part in PARTS]
        return [
            *parts,
            f"KV per token    {self.kv_bytes_per_token} bytes ({self.kv_bytes_per_token / 2**10:.1f} KiB)",
            f"KV tokens that fit in {self.gpu_bytes / GIB:g} GiB after the weights: {self.kv_tokens}",
            f"weights: {self.weight_bytes / GIB:.1f} GiB",
        ]


def meta_model(model_cfg: dict) -> PreTrainedModel:
    """The model `load_model(**model_cfg)` builds, on the meta device, from its architecture config."""
    kwargs = {key: value for key, value in model_cfg.items() if not key.startswith("_")}
    hf_config = load_config(**kwargs)
    dtype = DTYPES[kwargs.get("dtype", "float32")]
    attention = kwargs.get("attn_implementation", "sdpa")
    if kwargs.get("quantization") in (None, "none"):
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=attention)
    return build_nf4_model(hf_config, dtype, "meta", attention)


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """What every layer's attention caches per token, as the adapter measures it (qllm.modeling.adapters.kv_probe),
    on an unquantized copy of the architecture on the meta device (4-bit layers cannot run there)."""
    return adapter_for(eager_meta_model(config, dtype)).kv.bytes_per_token(dtype)


def plan(model: PreTrainedModel, gpu_memory_gib: float) -> MemoryPlan:
    part_bytes = dict.fromkeys(PARTS, 0)
    for name, tensor in named_tensors(model):
        part_bytes[part_of(name)] += tensor_bytes(tensor)
    kv = kv_bytes_per_token(model.config, model.dtype)
    return MemoryPlan(part_bytes, kv, int(gpu_memory_gib * GIB))


def named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer once (tied weights counted once)."""
    seen = set()
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            yield name, tensor


def part_of(name: str) -> str:
    dotted = f".{name}"
    return next((part for fragment, part in PART_OF if fragment in dotted), "other")


def tensor_bytes(tensor: torch.Tensor) -> int:
    if isinstance(tensor, Params4bit):
        if not tensor.bnb_quantized:  # still its unquantized meta weight
            return nf4_bytes(tensor.numel(), tensor.blocksize)
        absmax = tensor.quant_state.absmax
        return tensor.numel() * tensor.element_size() + absmax.numel() * absmax.element_size()
    return tensor.numel() * tensor.element_size()
