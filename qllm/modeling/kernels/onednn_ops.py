"""The two oneDNN operators the `onednn` CPU kernels call, behind one check.

`torch.ops.mkldnn._reorder_linear_weight` copies a weight [out, in] once into oneDNN's blocked
layout (an opaque CPU tensor); `torch.ops.mkldnn._linear_pointwise` multiplies by it. They are
what inductor uses when it freezes a CPU model: private, so `missing_reason` says, before any
model is changed, whether this torch build has them with the signatures used here.
"""

from __future__ import annotations

import torch

REORDER_BATCH_HINT = 16  # rows oneDNN tunes a bfloat16 reorder for; any row count still works


def missing_reason() -> str | None:
    """None when this torch can run the oneDNN kernels, else why not."""
    if not torch.backends.mkldnn.is_available():
        return f"torch {torch.__version__} was built without oneDNN (mkldnn)"
    mkldnn_ops = torch.ops.mkldnn
    for name in ("_reorder_linear_weight", "_linear_pointwise"):
        if not hasattr(mkldnn_ops, name):
            return f"torch {torch.__version__} has no torch.ops.mkldnn.{name} (a private op the oneDNN kernels use)"
    return None


def reorder(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] copied once into oneDNN's layout for `linear` (the parameter is untouched)."""
    weight = weight.detach().contiguous()
    if weight.dtype == torch.float32:
        return torch.ops.mkldnn._reorder_linear_weight(weight)
    return torch.ops.mkldnn._reorder_linear_weight(weight, REORDER_BATCH_HINT)


def linear(x: torch.Tensor, reordered: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) on the weight `reorder` made: x [..., in] -> [..., out]."""
    return torch.ops.mkldnn._linear_pointwise(x, reordered, bias, "none", [], "")
