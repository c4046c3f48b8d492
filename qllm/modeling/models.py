"""Build the model an engine runs: from a config with random weights, or from pretrained weights.

Random weights are the CPU default: costs do not depend on weight values, and nothing is
downloaded. Any Hugging Face causal LM architecture is named by its `model_type`.

`quantization: bnb4` holds the linears (but the LM head) and every routed expert in NF4: a
random-weight model is built piece by piece on its device (qllm.modeling.nf4_model); a pretrained one is
loaded through bitsandbytes, which quantizes its linears, then its experts go to NF4 where they are.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, PretrainedConfig, PreTrainedModel

from qllm.errors import ConfigurationError
from qllm.modeling.kernels import apply_cpu_kernels

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def quantization_config(quantization: str | None, compute_dtype: str = "float16") -> BitsAndBytesConfig | None:
    """`bnb4`: bitsandbytes NF4 weights with `compute_dtype` compute (the paper's setup)."""
    if quantization in (None, "none"):
        return None
    if quantization == "bnb4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPES[compute_dtype]
        )
    raise ConfigurationError(f"unknown quantization {quantization!r}; expected null or 'bnb4'")


def load_model(
    model_type: str | None = None,
    config: dict | None = None,
    pretrained: str | None = None,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    quantization: str | None = None,
    trust_remote_code: bool = False,
    cpu_kernels: str | None = None,
) -> PreTrainedModel:
    """A causal LM in eval mode.

    `pretrained` (a hub id or a local path) loads real weights through `from_pretrained`;
    otherwise `model_type` plus `config` kwargs build the architecture with random weights
    drawn from `seed`, so the same seed gives the same model. `cpu_kernels="onednn"` runs its
    GEMMs on oneDNN with weights reordered once (`qllm.modeling.kernels`); a model it cannot serve is refused.
    """
    if dtype not in DTYPES:
        raise ConfigurationError(f"model.dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    quant = quantization_config(quantization, compute_dtype=dtype)
    if pretrained is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                pretrained,
                dtype=DTYPES[dtype],
                device_map=device if quant is not None else None,
                quantization_config=quant,
                attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
            )
        except OSError as error:  # no such folder, and no hub to fetch it from
            raise ConfigurationError(f"model.pretrained {pretrained!r}: {error}") from error
        if quant is None:
            model = model.to(device)
        else:
            # bitsandbytes only for a 4-bit model: importing it logs a warning where its CPU kernels are missing
            from qllm.modeling.nf4_model import quantize_experts

            model = quantize_experts(model)
    else:
        if model_type is None:
            raise ConfigurationError("model: give either `pretrained` (hub id or path) or `model_type` with `config`")
        hf_config = architecture_config(model_type, config)
        if quant is not None:
            from qllm.modeling.nf4_model import build_nf4_model  # bitsandbytes only for a 4-bit model

            model = build_nf4_model(hf_config, DTYPES[dtype], device, attn_implementation, seed)
            model.config.quantization_config = quant.to_dict()  # as a loaded checkpoint records it (qllm.sim.shape)
        else:
            torch.manual_seed(seed)
            try:
                model = AutoModelForCausalLM.from_config(hf_config, dtype=DTYPES[dtype], attn_implementation=attn_implementation)
            except (ValueError, ImportError) as refused:  # transformers will not build it as configured
                raise ConfigurationError(
                    f"transformers refused to build {model_type} with model.attn_implementation={attn_implementation!r} "
                    f"(choose eager or sdpa, or change model.config): {refused}"
                ) from refused
            model = model.to(device)
    model = model.eval().requires_grad_(False)  # inference only: no step may build an autograd graph
    return apply_cpu_kernels(model, cpu_kernels)


def eager_meta_model(config: PretrainedConfig, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The architecture on the meta device with eager attention (every family has it), built from a
    copy of `config`: from_config writes the attention implementation into the config it is given,
    and a real model sharing that config would switch to eager attention (2.5x slower on padded
    prompts than its sdpa)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager",
                                                **({} if dtype is None else {"dtype": dtype}))  # fmt: skip


def architecture_config(model_type: str, config: dict | None) -> PretrainedConfig:
    """The Hugging Face config of `model_type` with the `config` kwargs set."""
    try:
        return AutoConfig.for_model(model_type, **(config or {}))
    except (ValueError, TypeError) as error:  # an unknown model type, or a config value of the wrong kind
        raise ConfigurationError(f"model.model_type {model_type!r} / model.config: {error}") from error


def load_config(
    model_type: str | None = None,
    config: dict | None = None,
    pretrained: str | None = None,
    dtype: str = "float32",
    quantization: str | None = None,
    trust_remote_code: bool = False,
    **placement,
) -> PretrainedConfig:
    """The Hugging Face config of the model `load_model` would build from the same arguments, without
    its weights and without downloading anything: from `model_type` + `config` (which a config for a
    hub checkpoint carries beside `pretrained`, for the simulator), else from a local `pretrained`
    folder's config.json. `dtype` and a 4-bit `quantization` are recorded as a loaded model's config
    records them. `placement` (seed, device, attn_implementation) concerns weights only."""
    if model_type is not None:
        hf_config = architecture_config(model_type, config)
    elif pretrained is not None and Path(pretrained).expanduser().is_dir():
        hf_config = AutoConfig.from_pretrained(Path(pretrained).expanduser(), trust_remote_code=trust_remote_code)
    else:
        raise ConfigurationError(
            f"model: the architecture of {pretrained!r} is needed without its weights; give `model_type` and "
            f"`config` in the model's YAML (as conf/model/mixtral_8x7b_4bit.yaml does), or a local `pretrained` folder"
        )
    hf_config.dtype = DTYPES[dtype]
    quant = quantization_config(quantization, compute_dtype=dtype)
    if quant is not None:
        hf_config.quantization_config = quant.to_dict()
    return hf_config

