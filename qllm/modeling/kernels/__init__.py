"""Faster CPU kernels for a loaded model, chosen by `model.cpu_kernels` (conf/model).

`onednn` (qllm/modeling/kernels/onednn.py): the model's GEMMs on oneDNN with weights reordered once.
A model the chosen kernels cannot serve is refused with the reason, before anything changes.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from qllm.errors import ConfigurationError
from qllm.modeling.kernels import onednn

CPU_KERNELS = ("onednn",)


def apply_cpu_kernels(model: PreTrainedModel, cpu_kernels: str | None) -> PreTrainedModel:
    """`model` with the `cpu_kernels` chosen (None: its own kernels, unchanged)."""
    if cpu_kernels in (None, "none"):
        return model
    if cpu_kernels not in CPU_KERNELS:
        raise ConfigurationError(f"model.cpu_kernels {cpu_kernels!r}: expected null or one of {CPU_KERNELS}")
    reason = onednn.unsupported_reason(model)
    if reason is not None:
        raise ConfigurationError(f"model.cpu_kernels='onednn' cannot serve this model: {reason} (set model.cpu_kernels=null)")
    onednn.use_onednn(model)
    return model
