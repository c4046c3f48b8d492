"""The executor against the oracle: every sequence's greedy tokens equal `model.generate` for it alone.

The engine loop is done by hand here: run a pass, append each returned token, stop a sequence
at its output_len. Batches mix prompt lengths (right padding) and phases, sequences join and
leave batches between steps, and passes are preempted between layers, or inside a layer (after
its attention half or an expert group, at expert granularity) while other batches run.

Ties: batching changes the shapes of float32 matmuls, so logits may differ from the lone run
by up to ~1e-6 (3e-7 measured). A step whose oracle top-2 logit margin is below MIN_MARGIN could flip
legitimately; fixed cases assert that no such step exists, random cases discard it (`assume`).
Everywhere else the tokens must be identical.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qllm.request import Request
from qllm.modeling.adapters.decoder import check_cache_argument
from qllm.executor import ATTENTION, Checkpoint, run_to_completion
from qllm.real.executor import RealExecutor
from qllm.modeling.models import load_model
from qllm.sequence import Sequence

MIN_MARGIN = 1e-4  # oracle top-2 logit margin below which a token is ambiguous


@cache
def tiny_model(seed: int = 0, num_layers: int = 2, vocab_size: int = 256, sliding_window=None,
               attn_implementation: str = "sdpa"):
    config = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=256, sliding_window=sliding_window,
    )
    return load_model(model_type="mixtral", config=config, seed=seed, attn_implementation=attn_implementation)


@cache
def oracle(model, prompt: tuple[int, ...], output_len: int) -> tuple[list[int], float]:
    """`generate`'s greedy tokens for the prompt alone (EOS ignored), and the smallest top-2 logit margin."""
    output = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False,
        eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
    )
    top2 = torch.cat(output.logits).topk(2, dim=-1).values  # [output_len, 2]
    return output.sequences[0, len(prompt):].tolist(), (top2[:, 0] - top2[:, 1]).min().item()


def make_sequences(executor: RealExecutor, prompts: list[list[int]], output_lens: list[int]) -> list[Sequence]:
    return [
        Sequence(Request(f"r{i}", 0.0, len(prompt), n, "BE", 1), list(prompt), executor.new_kv())
        for i, (prompt, n) in enumerate(zip(prompts, output_lens))
    ]


def random_prompts(vocab_size: int, lengths: list[int], seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in lengths]


def append(batch: list[Sequence], token_ids: list[int]) -> None:
    for seq, token_id in zip(batch, token_ids):
        seq.output_ids.append(token_id)


def step(executor: RealExecutor, batch: list[Sequence]) -> None:
    append(batch, run_to_completion(executor.forward(batch)))


def unfinished(sequences: list[Sequence]) -> list[Sequence]:
    return [seq for seq in sequences if not seq.has_all_tokens]


def assert_matches_oracle(model, sequences: list[Sequence]) -> None:
    for seq in sequences:
        expected, margin = oracle(model, tuple(seq.prompt_ids), seq.request.output_len)
        assert margin > MIN_MARGIN, f"{seq.request_id}: oracle has a near tie ({margin:.2e}); pick another case"
        assert seq.output_ids == expected, f"{seq.request_id}: prompt {seq.prompt_ids}"


def test_a_right_padded_batch_matches_generate_for_each_sequence():
    model = tiny_model()
    executor = RealExecutor(model)
    sequences = make_sequences(executor, random_prompts(256, [7, 1, 12, 3], seed=0), [5, 8, 3, 6])
    while unfinished(sequences):
        step(executor, unfinished(sequences))
    assert_matches_oracle(model, sequences)


def test_sequences_join_and_leave_batches_between_steps():
    model = tiny_model(num_layers=3)
    executor = RealExecutor(model, granularity="iteration")
    a, b, c, d = make_sequences(executor, random_prompts(256, [5, 9, 2, 6], seed=1), [6, 6, 5, 4])
    for batch in ([a, b], [a], [c, b], [b, a, c], [d, c], [a, d, b], [c, d], [a, b, c, d]):
        step(executor, unfinished(batch))
    while unfinished([a, b, c, d]):
        step(executor, unfinished([d, c, b, a]))
    assert_matches_oracle(model, [a, b, c, d])


def test_a_preempted_pass_resumes_after_other_batches_ran_to_completion():
    model = tiny_model(num_layers=3)
    executor = RealExecutor(model, granularity="layer")
    sequences = make_sequences(executor, random_prompts(256, [4, 6, 3, 8, 5], seed=2), [4, 5, 3, 4, 3])
    background, urgent = sequences[:3], sequences[3:]
    step(executor, background)  # prefill
    preempted = executor.forward(background)  # a decode pass
    assert next(preempted) == Checkpoint(layer=0)
    assert next(preempted) == Checkpoint(layer=1)  # suspended after layer 1 of 3
    while unfinished(urgent):
        step(executor, unfinished(urgent))
    assert next(preempted) == Checkpoint(layer=2)
    append(background, run_to_completion(preempted))
    while unfinished(background):
        step(executor, unfinished(background))
    assert_matches_oracle(model, sequences)


def test_a_prefill_preempted_mid_pass_resumes_and_a_closed_pass_leaves_no_trace():
    model = tiny_model()
    executor = RealExecutor(model)
    a, b, c = make_sequences(executor, random_prompts(256, [10, 3, 5], seed=3), [3, 3, 3])
    abandoned = executor.forward([c])
    next(abandoned)
    abandoned.close()  # set aside for good: c's cache is as before the pass
    assert c.num_cached_tokens == 0 and not c.kv.is_in_flight
    prefill = executor.forward([a, b])
    next(prefill)
    assert a.is_prefill and a.num_cached_tokens == 0  # layer 0's rows are not committed
    step(executor, [c])
    append([a, b], run_to_completion(prefill))
    assert (a.num_cached_tokens, b.num_cached_tokens) == (10, 3)
    while unfinished([a, b, c]):
        step(executor, unfinished([c, a, b]))
    assert_matches_oracle(model, [a, b, c])


def test_granularity_sets_the_checkpoints():
    model = tiny_model(num_layers=3)
    for granularity, expected in (("layer", [Checkpoint(0), Checkpoint(1), Checkpoint(2)]), ("iteration", [])):
        executor = RealExecutor(model, granularity=granularity)
        assert executor.num_layers == 3
        (seq,) = make_sequences(executor, [[1, 2, 3]], [1])
        checkpoints = list(executor.forward([seq]))
        assert checkpoints == expected and seq.num_cached_tokens == 3
    for per_checkpoint in (1, 2, 4):
        executor = RealExecutor(model, granularity="expert", experts_per_checkpoint=per_checkpoint)
        (seq,) = make_sequences(executor, [[1, 2, 3]], [1])
        checkpoints = list(executor.forward([seq]))
        for layer in range(3):  # attention half, then one checkpoint per group of the experts that got tokens
            inside = [c.expert for c in checkpoints if c.layer == layer]
            assert inside[0] == ATTENTION and inside[1:] == sorted(inside[1:]) and len(inside) >= 2
            assert len(inside) - 1 <= -(-4 // per_checkpoint)  # 4 experts, ceil(4 / k) groups at most
        assert seq.num_cached_tokens == 3


def test_a_pass_preempted_between_experts_resumes_with_its_partial_sums():
    model = tiny_model(num_layers=2)
    executor = RealExecutor(model, granularity="expert")
    sequences = make_sequences(executor, random_prompts(256, [9, 4, 6, 3], seed=7), [4, 3, 4, 3])
    background, urgent = sequences[:2], sequences[2:]
    preempted = executor.forward(background)  # a prefill: 9 + 4 tokens reach most experts
    checkpoints = [next(preempted) for _ in range(3)]
    assert checkpoints[0] == Checkpoint(layer=0, expert=ATTENTION) and checkpoints[2].layer == 0
    while unfinished(urgent):  # other batches run every layer's attention and experts meanwhile
        step(executor, unfinished(urgent))
    rest = list(_checkpoints_until_done(preempted, background))
    assert rest[0].layer == 0 and rest[0].expert > checkpoints[2].expert  # resumed at the next expert, not over
    while unfinished(background):
        step(executor, unfinished(background))
    assert_matches_oracle(model, sequences)


def _checkpoints_until_done(forward_pass, batch):
    """Yield the pass's remaining checkpoints; append its tokens to `batch` when it completes."""
    while True:
        try:
            yield next(forward_pass)
        except StopIteration as done:
            append(batch, done.value)
            return


def test_a_sequence_cannot_be_in_two_unfinished_passes():
    executor = RealExecutor(tiny_model())
    a, b = make_sequences(executor, [[1, 2], [3]], [2, 2])
    first = executor.forward([a])
    next(first)
    with pytest.raises(ValueError, match=r"batch \['r1', 'r0'\]: .*unfinished"):
        next(executor.forward([b, a]))
    first.close()


@pytest.mark.parametrize("granularity", ["layer", "expert"])
def test_sliding_window_and_eager_attention_match_generate(granularity):
    for model in (tiny_model(seed=4, sliding_window=3), tiny_model(seed=5, attn_implementation="eager")):
        executor = RealExecutor(model, granularity=granularity)
        sequences = make_sequences(executor, random_prompts(256, [6, 2, 9], seed=4), [5, 7, 4])
        while unfinished(sequences):
            step(executor, unfinished(sequences))
        assert_matches_oracle(model, sequences)


def test_unsupported_models_are_named_in_the_error():
    llama = load_model(model_type="llama", config=dict(vocab_size=64, hidden_size=32, intermediate_size=32,
                                                       num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="model_type 'llama': no decoder layer's MLP block holds routed `experts`"):
        RealExecutor(llama)
    with pytest.raises(ValueError, match=r"granularity 'token': expected one of \('iteration', 'layer', 'expert'\)"):
        RealExecutor(tiny_model(), granularity="token")
    with pytest.raises(ValueError, match="experts_per_checkpoint must be >= 1"):
        RealExecutor(tiny_model(), granularity="expert", experts_per_checkpoint=0)
    model = tiny_model(seed=6)
    model.config._attn_implementation = "flex_attention"
    try:
        with pytest.raises(ValueError, match="'flex_attention'.*attn_implementation='sdpa'"):
            RealExecutor(model)
    finally:
        model.config._attn_implementation = "sdpa"


@st.composite
def workloads(draw):
    """A tiny model and 2-5 requests: (seed, num_layers, vocab_size, prompts, output_lens)."""
    seed, num_layers = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    vocab_size = draw(st.sampled_from([128, 384, 1000]))
    num_sequences = draw(st.integers(2, 5))
    prompts = [draw(st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=10)) for _ in range(num_sequences)]
    output_lens = [draw(st.integers(1, 5)) for _ in range(num_sequences)]
    return seed, num_layers, vocab_size, prompts, output_lens


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads(), data=st.data())
def test_any_schedule_of_joins_leaves_and_preemptions_matches_generate(workload, data):
    """A random scheduler: start a batch of idle sequences (a random subset, any phases) and stop it
    after a random number of checkpoints, or resume a suspended batch; until every sequence is done.
    Checkpoints are layers, or attention halves and expert groups (1-3 experts each)."""
    seed, num_layers, vocab_size, prompts, output_lens = workload
    model = tiny_model(seed=seed, num_layers=num_layers, vocab_size=vocab_size)
    for prompt, n in zip(prompts, output_lens):
        assume(oracle(model, tuple(prompt), n)[1] > MIN_MARGIN)
    granularity = data.draw(st.sampled_from(["layer", "expert"]))
    executor = RealExecutor(model, granularity=granularity, experts_per_checkpoint=data.draw(st.integers(1, 3)))
    checkpoints_per_pass = num_layers * (5 if granularity == "expert" else 1)  # at most: attention + 4 expert groups
    sequences = make_sequences(executor, prompts, output_lens)
    suspended: list[tuple[list[Sequence], object]] = []
    while unfinished(sequences):
        in_flight = {id(seq) for batch, _ in suspended for seq in batch}
        idle = [seq for seq in unfinished(sequences) if id(seq) not in in_flight]
        if idle and (not suspended or data.draw(st.booleans())):
            batch = data.draw(st.lists(st.sampled_from(idle), min_size=1, unique_by=id))
            suspended.append((batch, executor.forward(batch)))
        batch, forward_pass = suspended.pop(data.draw(st.integers(0, len(suspended) - 1)))
        for _ in range(data.draw(st.integers(1, checkpoints_per_pass + 1))):  # then suspend it, unless it finished
            try:
                next(forward_pass)
            except StopIteration as done:
                append(batch, done.value)
                break
        else:
            suspended.append((batch, forward_pass))
    assert_matches_oracle(model, sequences)


class OldAttention(torch.nn.Module):
    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None):
        return hidden_states, None


class OldDecoderLayer(torch.nn.Module):
    """A decoder layer as transformers < 5.24 wrote it: the cache is `past_key_values`."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = OldAttention()

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None):
        return hidden_states


def test_a_transformers_release_that_would_drop_the_cache_is_refused_at_start_up():
    with pytest.raises(RuntimeError, match=r"OldDecoderLayer.forward takes no `cache`.*transformers>=5.24"):
        check_cache_argument(OldDecoderLayer(), OldAttention())
    layer = tiny_model().model.layers[0]
    check_cache_argument(layer, layer.self_attn)  # the installed release passes
