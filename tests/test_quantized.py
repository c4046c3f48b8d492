"""4-bit (bitsandbytes NF4) models through the QLLMEngine: token-exact against `generate` on the same
quantized model, at layer and expert granularity, on CPU.

What transformers 5.24 quantizes: bitsandbytes replaces `nn.Linear` modules, so the attention
projections (and Qwen2-MoE's shared expert and its gate) become `Linear4bit`; the routed
experts are 3D parameters (`gate_up_proj`, `down_proj`), not Linear modules, and stay in the
compute dtype, as do the routers (Mixtral's is a bare weight), the norms, the embeddings and
`lm_head` (skipped by default). Expert granularity calls those same modules, so it runs
quantized models unchanged.

bitsandbytes' CPU 4-bit kernel needs out_features divisible by 32, so Qwen2-MoE's
`shared_expert_gate` (out_features 1) cannot run quantized on CPU, under `generate` as much as
here: this test leaves it (and lm_head) unquantized through `llm_int8_skip_modules`.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from bitsandbytes.nn import Linear4bit

from hydra.utils import instantiate

from harness.engines import RunResources
from qllm.models import quantization_config, quantized_copy
from harness.app import compose_config
from tests.helpers import assert_matches_oracle, engine_config, replay_on_steps, requests_of

SHRINK = dict(vocab_size=512, num_hidden_layers=2, max_position_embeddings=256)
FAMILIES = {"mixtral": dict(num_local_experts=4), "qwen2_moe": dict(num_experts=4)}
SPECS = [(10, 4, "BE", 0), (9, 3, "BE", 0), (5, 3, "LS", 1), (6, 3, "LS", 5)]


@cache
def quantized_model(family: str):
    shrink = [f"model.config.{key}={value}" for key, value in {**SHRINK, **FAMILIES[family]}.items()]
    if family == "mixtral":
        return instantiate(compose_config("model=tiny_mixtral", "model.quantization=bnb4", *shrink).model)
    quant = quantization_config("bnb4", compute_dtype="float32")
    quant.llm_int8_skip_modules = ["shared_expert_gate", "lm_head"]  # see the module docstring
    model = instantiate(compose_config(f"model=tiny_{family}", *shrink).model)
    return quantized_copy(model, quant, "cpu", "sdpa").eval()


def test_attention_is_4bit_and_routed_experts_stay_in_the_compute_dtype():
    model = quantized_model("qwen2_moe")
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, Linear4bit) and isinstance(layer.mlp.shared_expert.up_proj, Linear4bit)
    assert layer.mlp.experts.gate_up_proj.dtype == torch.float32 and not isinstance(model.lm_head, Linear4bit)


@pytest.mark.parametrize("granularity", ["layer", "expert"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_4bit_model_matches_generate_on_the_same_model_under_preemption(config, family, granularity):
    model = quantized_model(family)
    requests = requests_of(SPECS)
    recorder = replay_on_steps(RunResources(config, model=model), engine_config(config, "qllm", granularity=granularity), requests)
    assert any(events.preempted_s for events in recorder.requests.values())
    assert_matches_oracle(model, recorder, requests)
