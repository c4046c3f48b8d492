"""A random-weight model in 4 bits (`quantization: bnb4`), built one piece at a time on its device.

Every `nn.Linear` but the LM head becomes a bitsandbytes `Linear4bit` (NF4, blocks of 64, no
double quantization: what `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")` makes
of a checkpoint), and every routed expert goes to NF4 (qllm.modeling.kernels.nf4_experts). Embeddings,
norms, routers and the LM head stay in the compute dtype.

The model is first built on the meta device (no memory). Each piece (a decoder layer, the
embeddings, the final norm, the rotary embedding, the LM head) is then materialized on the CPU,
initialized by the model's own `_init_weights` from `seed`, quantized, and moved to `device`, so
the peak is one layer in the compute dtype (Mixtral-8x7B: 2.8 GB), never the whole 93 GB model.
On `device="meta"` nothing is materialized: the quantized structure alone, for the memory plan
(a `Linear4bit` there holds its unquantized meta weight; `qllm.memory_plan` counts it as NF4).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from bitsandbytes.nn import Linear4bit, Params4bit
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from qllm.modeling.kernels import nf4_experts
from qllm.modeling.kernels.onednn import experts_modules

KEPT = ("lm_head",)  # linears left in the compute dtype, as transformers' bitsandbytes integration leaves them


def build_nf4_model(
    hf_config: PretrainedConfig, dtype: torch.dtype, device: str, attn_implementation: str = "sdpa", seed: int = 0
) -> PreTrainedModel:
    """`hf_config`'s architecture with random weights drawn from `seed`, in NF4, on `device`."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=attn_implementation)
    torch.manual_seed(seed)
    for name, piece in pieces(model):
        if device != "meta":
            piece.to_empty(device="cpu")
            for module in piece.modules():
                model._init_weights(module)
        quantize_piece(piece, name, dtype, device)
        piece.to(device)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    if experts_modules(model):
        model.set_experts_implementation(nf4_experts.NF4)
    return model.eval().requires_grad_(False)


def quantize_experts(model: PreTrainedModel) -> PreTrainedModel:
    """An already loaded model's routed experts to NF4, where they are (`from_pretrained` with
    bitsandbytes quantizes its linears only)."""
    experts = experts_modules(model)
    for module in experts:
        nf4_experts.quantize_module(module, model.dtype)
    if experts:
        model.set_experts_implementation(nf4_experts.NF4)
    return model


def pieces(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The model's top modules with each decoder layer on its own: (qualified name, module)."""
    for name, child in model.named_children():
        if name != "model":
            yield name, child
            continue
        for sub_name, sub in child.named_children():
            if isinstance(sub, nn.ModuleList):
                yield from ((f"model.{sub_name}.{i}", layer) for i, layer in enumerate(sub))
            else:
                yield f"model.{sub_name}", sub


def quantize_piece(piece: nn.Module, name: str, dtype: torch.dtype, device: str) -> None:
    """Every linear of `piece` (but the kept ones) to `Linear4bit`, its experts to NF4 on `device`."""
    if isinstance(piece, nn.Linear) and name not in KEPT:
        raise ValueError(f"{name}: a top-level linear other than the LM head; nothing holds it to quantize")
    for module in experts_modules(piece):
        nf4_experts.quantize_module(module, dtype, device)
    for parent in list(piece.modules()):
        for child_name, child in parent.named_children():
            if type(child) is nn.Linear and child_name not in KEPT:
                setattr(parent, child_name, nf4_linear(child, dtype))


def nf4_linear(linear: nn.Linear, compute_dtype: torch.dtype) -> Linear4bit:
    """`linear`'s weights in a `Linear4bit`; they are quantized when it moves to a real device."""
    module = Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                        compute_dtype=compute_dtype, compress_statistics=False, quant_type="nf4", device="meta")  # fmt: skip
    module.weight = Params4bit(linear.weight.data, requires_grad=False, compress_statistics=False,
                               quant_type="nf4", blocksize=nf4_experts.BLOCKSIZE, module=module)  # fmt: skip
    module.bias = linear.bias
    if compute_dtype == torch.float32:  # bitsandbytes' AVX512-BF16 CPU kernel would multiply a float32 model in bf16
        module.support_avx512bf16_for_cpu = False
    return module
