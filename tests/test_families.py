"""Every supported MoE family through the QLLMEngine: token-exact against `generate` under preemption,
at iteration, layer and expert granularity, all through the one generic adapter.

Each family's model is its conf/model/tiny_<family>.yaml shrunk (vocab 512, 2 layers, 4 experts)
with the family's quirks switched on where it has them: Qwen2-MoE's shared expert, a sliding
window on some layers and a dense (mlp_only) layer; Qwen3-MoE's renormalized top-k, a dense layer
off the decoder_sparse_step grid and a window; OLMoE's qkv clipping; PhiMoE's sparsemixer, a
window, and biased attention and LM head; GraniteMoE's four multipliers (and GraniteMoeShared's
shared MLP). The families added with the generic adapter have their quirks in their YAMLs (two
layers already): DeepSeek-V2/V3 and GLM-4.7-Flash's latent attention (keys and values of different
widths in the KV pool), grouped top-k with a score-correction bias, dense first layers and shared
experts; gpt-oss's sinks, alternating sliding-window layers and biased experts; FlexOlmo's
post-norm and AFMoE's and Kolibri1's sandwich norms; routers fed a bias kept on their block
(MiniMax-M2, AFMoE).

Families refused (tests at the end): those whose layers keep state other than a KV cache, by name,
and anything the generic adapter cannot place, with its own one-line reason.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoConfig, AutoModelForCausalLM

from harness.engines import RunResources
from harness.recorder import Recorder
from qllm.modeling import rotary
from qllm.modeling.adapters import adapter_for
from qllm.errors import ConfigurationError
from qllm.executor import ATTENTION, run_to_completion
from qllm.modeling.moe import ExpertByExpert
from qllm.real.executor import RealExecutor
from qllm.request import Request
from qllm.sequence import Sequence
from harness.app import compose_config
from tests.helpers import assert_matches_oracle, engine_config, oracle_tokens, replay_on_steps, requests_of

SHRINK = dict(vocab_size=512, num_hidden_layers=2, max_position_embeddings=256)
QUIRKS = {
    "mixtral": dict(num_local_experts=4),
    "qwen2_moe": dict(
        num_experts=4, use_sliding_window=True, sliding_window=4, max_window_layers=2, mlp_only_layers=[1]
    ),
    "qwen3_moe": dict(num_experts=4, decoder_sparse_step=2, use_sliding_window=True, sliding_window=5),
    "olmoe": dict(num_experts=4, clip_qkv=0.5),
    "phimoe": dict(num_local_experts=4, sliding_window=6),
    "granitemoe": dict(num_local_experts=4),
    "granitemoeshared": dict(num_local_experts=4),
    **{family: {} for family in (  # already two layers and four experts in their YAMLs
        "deepseek_v3", "deepseek_v2", "glm4_moe_lite", "glm4_moe", "gpt_oss", "ernie4_5_moe", "exaone_moe", "dots1",
        "hunyuan_v1_moe", "minimax_m2", "flex_olmo", "solar_open", "flint", "kolibri1", "afmoe",
    )},
}
FAMILIES = list(QUIRKS)
GRANULARITIES = ["iteration", "layer", "expert"]
# Two long BE prompts at step 0; LS prompts arrive between steps, while a quantum runs (a step
# started at t occupies [t, t + 1)), so they land at every kind of checkpoint; one more BE joins.
SPECS = [(10, 8, "BE", 0), (9, 8, "BE", 0), (5, 3, "LS", 1.5), (3, 8, "BE", 2.5), (7, 3, "LS", 4.5),
         (6, 2, "LS", 7.5), (4, 2, "LS", 13.5), (5, 2, "LS", 28.5), (3, 2, "LS", 41.5)]  # fmt: skip
# Where each granularity preempts: QLLM inside a pass; at `iteration` a pass has no checkpoint, so
# there the engine is priority_cb, which preempts sequences between iterations instead.
ENGINE_AT = {"iteration": "priority_cb", "layer": "qllm", "expert": "qllm"}


@cache
def family_resources(family: str) -> RunResources:
    """conf/config.yaml with model=tiny_<family>, shrunk, the family's quirks switched on."""
    overrides = [f"++model.config.{key}={value}" for key, value in {**SHRINK, **QUIRKS[family]}.items()]
    return RunResources(compose_config(f"model=tiny_{family}", "engine=[qllm,priority_cb]", *overrides))


def family_model(family: str):
    return family_resources(family).model


@cache
def expected_tokens(family: str) -> dict[str, list[int]]:
    model = family_model(family)
    return {r.request_id: oracle_tokens(model, r) for r in requests_of(SPECS)}


def run_engine(family: str, granularity: str, experts_per_checkpoint: int = 1) -> Recorder:
    resources = family_resources(family)
    engine = ENGINE_AT[granularity]
    cfg = engine_config(resources.cfg, engine, policy__max_batch_size=2, granularity=granularity,
                        experts_per_checkpoint=experts_per_checkpoint)  # fmt: skip
    return replay_on_steps(resources, cfg, requests_of(SPECS), engine)


def quantum_before(recorder: Recorder, request_id: str, t_s: float):
    return [q for q in recorder.quanta if request_id in q.request_ids and q.t_start_s < t_s][-1]


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_matches_generate_under_preemption(family, granularity):
    recorder = run_engine(family, granularity, experts_per_checkpoint=2 if family == "qwen2_moe" else 1)
    for request_id, expected in expected_tokens(family).items():
        assert recorder.requests[request_id].token_ids == expected, (family, granularity, request_id)
    preempted = {rid: ev.preempted_s for rid, ev in recorder.requests.items() if ev.preempted_s}
    assert preempted, "the LS arrivals should preempt BE work"
    stops = [quantum_before(recorder, rid, t) for rid, times in preempted.items() for t in times]
    if granularity == "iteration":  # between iterations: the sequence's last quantum ended its pass
        assert all(q.layer is None for q in stops) and not any(q.is_resume for q in recorder.quanta), stops
    elif granularity == "expert":  # inside a layer: after its attention half or an expert group, or a dense MLP
        dense = {index for index, parts in enumerate(adapter_for(family_model(family)).parts) if parts.moe is None}
        assert all(q.expert is not None or q.layer in dense for q in stops), stops
        assert any(q.expert is not None and q.expert >= 0 for q in stops), stops  # after an expert group
    else:
        assert all(q.expert is None and q.layer is not None for q in stops), stops


def test_family_quirks_reach_the_adapter():
    qwen2 = adapter_for(family_model("qwen2_moe"))
    assert qwen2.sliding_windows == [4, None]  # layer 0 slides, layer 1 attends fully
    assert qwen2.parts[0].moe.shared is not None and qwen2.parts[1].moe is None  # layer 1 is dense
    qwen3 = adapter_for(family_model("qwen3_moe"))
    assert qwen3.sliding_windows == [5, 5] and qwen3.parts[0].moe is None and qwen3.parts[1].moe is not None
    assert adapter_for(family_model("phimoe")).parts[0].moe.router is family_model("phimoe").model.layers[0].mlp.router


def test_a_dense_layer_checkpoints_after_attention_and_after_its_mlp():
    executor = RealExecutor(family_model("qwen3_moe"), granularity="expert", experts_per_checkpoint=8)
    seq = Sequence(Request("r0", 0.0, 3, 1, "BE", 1), [1, 2, 3], executor.new_kv())
    checkpoints = [(c.layer, c.expert) for c in executor.forward([seq])]
    assert checkpoints[:3] == [(0, ATTENTION), (0, None), (1, ATTENTION)]  # dense layer 0: attention, MLP whole
    assert len(checkpoints) == 4 and checkpoints[3][1] >= 0  # sparse layer 1: attention, then one group of 8


@pytest.mark.parametrize("family", FAMILIES)
def test_each_layer_run_in_halves_equals_the_whole_layer(family):
    """The norms, MLP half and shared expert the generic adapter found are where the layer runs them:
    attention half, then the MLP half whole and expert by expert, bit for bit the layer's own forward."""
    model = family_model(family)
    adapter = adapter_for(model)
    hidden = torch.randn(2, 6, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    position_ids = torch.arange(6).expand(2, 6)
    position_embeddings = adapter.rotary_emb(hidden, position_ids=position_ids)
    for layer, parts in zip(adapter.layers, adapter.parts):
        with torch.no_grad():
            expected = layer(hidden, position_embeddings=position_embeddings, position_ids=position_ids)
            attended = parts.attend(hidden, position_embeddings, None, position_ids, None)
            mlp_input = parts.mlp_input(attended).reshape(-1, hidden.shape[-1])
            whole = parts.finish_mlp(attended, parts.run_mlp(mlp_input[None])[0].view_as(hidden))
            assert torch.equal(whole, expected), family
            if parts.moe is not None:
                by_experts = ExpertByExpert(parts.moe, mlp_input)
                for unit in by_experts.units:
                    by_experts.run(unit)
                assert torch.equal(parts.finish_mlp(attended, by_experts.output().view_as(hidden)), expected), family


@pytest.mark.parametrize("name", [f"tiny_{family}" for family in FAMILIES if family != "mixtral"])
def test_tiny_model_configs_load_and_run_at_expert_granularity(name):
    model = instantiate(compose_config(f"model={name}").model)
    assert model.config.vocab_size == 32000  # the shipped traces' token ids fit
    executor = RealExecutor(model, granularity="expert")
    seq = Sequence(Request("r0", 0.0, 3, 1, "BE", 1), [31999, 5, 7], executor.new_kv())
    tokens = run_to_completion(executor.forward([seq]))
    assert len(tokens) == 1 and 0 <= tokens[0] < 32000


LONGROPE = ("{rope_type:longrope,rope_theta:10000.0,short_factor:[1,1,1,1,1,1,1,1],"
            "long_factor:[4,5,6,7,8,9,10,11],short_mscale:1.0,long_mscale:4.0,original_max_position_embeddings:16}")


def test_a_length_dependent_rope_is_computed_per_sequence():
    """PhiMoE's longrope switches every position to its long scaling once a sequence passes
    original_max_position_embeddings: a short sequence batched with a long one keeps its own rope."""
    overrides = [f"++model.config.{key}={value}" for key, value in {**SHRINK, "num_local_experts": 4}.items()]
    resources = RunResources(compose_config("model=tiny_phimoe", "engine=[qllm]", *overrides,
                                            f"++model.config.rope_parameters={LONGROPE}"))  # fmt: skip
    model = resources.model
    position_ids = torch.stack([torch.tensor([0, 1, 2, 3, 4] + [4] * 15), torch.arange(20)])  # 5 and 20 tokens
    hidden = torch.zeros(2, 20, model.config.hidden_size)
    alone = model.model.rotary_emb(hidden[:1, :5], position_ids[:1, :5])[0][0]
    batched = model.model.rotary_emb(hidden, position_ids)[0][0, :5]
    assert not torch.allclose(batched, alone)  # one rope for the batch would be the long one's
    assert torch.equal(rotary.position_embeddings(model.model.rotary_emb, hidden, position_ids)[0][0, :5], alone)
    requests = requests_of([(5, 6, "BE", 0), (20, 6, "BE", 0)])
    recorder = replay_on_steps(resources, engine_config(resources.cfg, "qllm"), requests)
    assert_matches_oracle(model, recorder, requests)


STATEFUL = ["qwen3_next", "qwen3_5_moe", "jamba", "nemotron_h", "minimax", "granitemoehybrid", "kimi_linear", "lfm2_moe",
            "bailing_hybrid"]  # fmt: skip


@pytest.mark.parametrize("model_type", STATEFUL)
def test_families_whose_layers_keep_other_state_are_refused_naming_the_layer(model_type):
    config = AutoConfig.for_model(model_type)
    with pytest.raises(ConfigurationError) as refused:
        adapter_for(SimpleNamespace(config=config))
    message = str(refused.value)
    assert "\n" not in message and f"{model_type!r}" in message and "not a key/value cache" in message, message
    layer_class = re.search(r"\((\w+)\)", message).group(1)  # the layer type named is the family's own module
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    assert hasattr(modeling, layer_class), (model_type, layer_class)


GENERIC_REFUSALS = {  # model_type (its default config, two layers, on the meta device) -> the reason's words
    "cohere2_moe": "has no norm of its own around its MLP",  # attention and MLP in parallel
    "axk1": "also holds ['post_mlp_layernorm']",  # a norm inside the MoE block, after the experts' sum
    "mimo_v2_flash": "computes a different rope per layer type",
    "llama4_text": "layer_types ['chunked_attention']",
    "jetmoe": "no decoder layer's MLP block holds routed `experts`",  # its experts are not transformers' experts
}


@pytest.mark.parametrize("model_type", GENERIC_REFUSALS)
def test_what_the_generic_adapter_cannot_place_is_refused_in_one_line(model_type):
    config = AutoConfig.for_model(model_type, num_hidden_layers=2)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ConfigurationError) as refused:
        adapter_for(model)
    message = str(refused.value)
    assert "\n" not in message and f"{model_type!r}" in message and GENERIC_REFUSALS[model_type] in message, message


def test_experts_outside_the_experts_interface_are_refused():
    """Llama 4's experts take every expert's inputs at once (no top-k index): not runnable one by one."""
    config = AutoConfig.for_model("llama4_text", num_hidden_layers=2, layer_types=["full_attention"] * 2)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ConfigurationError, match=r"Llama4TextExperts.forward takes \['hidden_states'\], not"):
        adapter_for(model)
