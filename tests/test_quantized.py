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
from pathlib import Path

import pytest
import torch
import yaml
from bitsandbytes.nn import Linear4bit

from harness.recorder import Recorder
from qllm.models import load_model, quantization_config, quantized_copy
from tests.engine_helpers import StepClock, build_engine, drive, make_request, oracle_tokens

CONF = Path(__file__).resolve().parents[1] / "conf"
SHRINK = dict(vocab_size=512, num_hidden_layers=2, max_position_embeddings=256)
FAMILIES = {"mixtral": dict(num_local_experts=4), "qwen2_moe": dict(num_experts=4)}
SPECS = [(10, 4, "BE", 0), (9, 3, "BE", 0), (5, 3, "LS", 1), (6, 3, "LS", 5)]


@cache
def quantized_model(family: str):
    cfg = yaml.safe_load((CONF / "model" / f"tiny_{family}.yaml").read_text())
    config = {**cfg["config"], **SHRINK, **FAMILIES[family]}
    if family == "mixtral":
        return load_model(model_type=cfg["model_type"], config=config, seed=0, quantization="bnb4")
    quant = quantization_config("bnb4", compute_dtype="float32")
    quant.llm_int8_skip_modules = ["shared_expert_gate", "lm_head"]  # see the module docstring
    model = load_model(model_type=cfg["model_type"], config=config, seed=0)
    return quantized_copy(model, quant, "cpu", "sdpa").eval()


def test_attention_is_4bit_and_routed_experts_stay_in_the_compute_dtype():
    model = quantized_model("qwen2_moe")
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, Linear4bit) and isinstance(layer.mlp.shared_expert.up_proj, Linear4bit)
    assert layer.mlp.experts.gate_up_proj.dtype == torch.float32 and not isinstance(model.lm_head, Linear4bit)


@pytest.mark.parametrize("granularity", ["layer", "expert"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_4bit_model_matches_generate_on_the_same_model_under_preemption(family, granularity):
    model = quantized_model(family)
    cfg = yaml.safe_load((CONF / "engine" / "qllm.yaml").read_text())["qllm"]
    cfg.update(granularity=granularity)
    recorder = Recorder(StepClock())
    requests = [make_request(i, p, o, c, float(a)) for i, (p, o, c, a) in enumerate(SPECS)]
    drive(build_engine(cfg, model, recorder, "qllm"), recorder, requests)
    assert any(events.preempted_s for events in recorder.requests.values())
    for request in requests:
        assert recorder.requests[request.request_id].token_ids == oracle_tokens(model, request), request
