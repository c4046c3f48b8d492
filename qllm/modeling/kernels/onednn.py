"""`cpu_kernels: onednn`: a model's GEMMs on oneDNN with weights reordered once (docs/capacity.md).

- Every experts module gets its reordered weights and runs the `onednn` experts implementation
  (`qllm.modeling.kernels.onednn_experts`).
- The LM head (the output embeddings, a plain `nn.Linear`) becomes a `OneDNNLinear` holding the
  same parameters. Other linears keep their kernel: a oneDNN call costs ~30 us more than
  `F.linear` whatever its size, which the attention projections' small GEMMs do not win back
  (docs/capacity.md).

The model keeps its parameters and the order its modules run in (the LM head becomes an
`nn.Linear` subclass holding the same parameters), so `generate` and the executor run the same
model. Cost: one more copy of those weights in memory. Numerics: float32
logits within ~2e-6 of the stock kernels (greedy tokens identical on the oracle tests);
bfloat16 bit-identical.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from qllm.modeling.kernels import onednn_experts, onednn_ops
from qllm.modeling.kernels.onednn_linear import OneDNNLinear

DTYPES = (torch.float32, torch.bfloat16)


def experts_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that dispatch through transformers' experts interface (its decorator,
    `use_experts_implementation`, gives each the layout flags read here)."""
    return [module for module in model.modules() if hasattr(module, "has_gate") and hasattr(module, "is_transposed")]


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """None when `use_onednn` can serve `model`, else why not (nothing is changed either way)."""
    if model.device.type != "cpu":
        return f"it runs on {model.device}; the oneDNN kernels are for the CPU"
    if model.dtype not in DTYPES:
        return f"its dtype is {model.dtype}; the oneDNN kernels take float32 or bfloat16"
    if getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None):
        return "its weights are quantized"
    reason = onednn_ops.missing_reason()
    if reason is not None:
        return reason
    for experts in experts_modules(model):
        reason = onednn_experts.unsupported_reason(experts)
        if reason is not None:
            return reason
    return None


def use_onednn(model: PreTrainedModel) -> None:
    """Route `model`'s expert GEMMs and its LM head through oneDNN (check `unsupported_reason` first)."""
    head = model.get_output_embeddings()
    if type(head) is nn.Linear:  # a subclass (a quantized layer, say) keeps its own kernel
        model.set_output_embeddings(OneDNNLinear(head))
    experts = experts_modules(model)
    for module in experts:
        onednn_experts.attach(module)
    if experts:
        model.set_experts_implementation(onednn_experts.ONEDNN)  # each experts module reads it at every call
