"""UnifiedDynamicCache and per-sequence KV storage, driven by hand-made key/value tensors (no model)."""

from __future__ import annotations

import pytest
import torch


from qllm.kv import KVPool, KVShape, SequenceKV
from qllm.real.unified_cache import UnifiedDynamicCache

NUM_LAYERS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 2, 2, 4, 4


def new_pool() -> KVPool:
    return KVPool(KVShape(NUM_LAYERS, KV_HEADS, HEAD_DIM, KV_HEADS, HEAD_DIM), torch.float32, "cpu", block_size=BLOCK_SIZE)


def new_kvs(count: int) -> list[SequenceKV]:
    """Sequences sharing one pool."""
    pool = new_pool()
    return [SequenceKV(pool) for _ in range(count)]


def new_states(num_new: list[int], seed: int) -> list[torch.Tensor]:
    """Per layer, the keys a pass writes: [batch, kv_heads, max(num_new), head_dim]; padded slots hold NaN."""
    generator = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(NUM_LAYERS):
        keys = torch.randn(len(num_new), KV_HEADS, max(num_new), HEAD_DIM, generator=generator)
        for row, n in enumerate(num_new):
            keys[row, :, n:] = float("nan")  # a padded slot: must never reach a sequence's cache
        states.append(keys)
    return states


def run_pass(kvs: list[SequenceKV], num_new: list[int], seed: int, layers=range(NUM_LAYERS), commit=True):
    """One pass's writes (keys; values are keys + 1), returning the cache and what each layer wrote."""
    cache = UnifiedDynamicCache(kvs, num_new, NUM_LAYERS)
    states = new_states(num_new, seed)
    for layer in layers:
        cache.update(states[layer], states[layer] + 1, layer)
    if commit:
        cache.commit()
    return cache, states


def expected_keys(history: list[tuple[torch.Tensor, int, int]], layer: int) -> torch.Tensor:
    """A sequence's keys from its passes: each (states, row, num_new) -> [kv_heads, tokens, head_dim]."""
    return torch.cat([states[layer][row, :, :num_new] for states, row, num_new in history], dim=1)


def test_update_returns_the_batch_view_with_each_sequences_rows():
    a, b = new_kvs(2)
    _, first = run_pass([a, b], [3, 1], seed=0)
    cache, second = run_pass([a, b], [1, 4], seed=1, layers=[], commit=False)
    keys, values = cache.update(second[0], second[0] + 1, 0)
    assert keys.shape == values.shape == (2, KV_HEADS, 5, HEAD_DIM)  # key_length = max(3 + 1, 1 + 4)
    torch.testing.assert_close(keys[0, :, :4], expected_keys([(first, 0, 3), (second, 0, 1)], 0))
    torch.testing.assert_close(keys[1, :, :5], expected_keys([(first, 1, 1), (second, 1, 4)], 0))
    torch.testing.assert_close(values[1, :, :5], keys[1, :, :5] + 1)
    assert not torch.isnan(keys).any()  # padded query slots were not written


def test_position_ids_and_mask_of_a_mixed_batch():
    decoding, prefilling = new_kvs(2)
    run_pass([decoding], [3], seed=0)
    cache = UnifiedDynamicCache([decoding, prefilling], [1, 2], NUM_LAYERS)
    assert cache.position_ids().tolist() == [[3, 3], [0, 1]]  # padded slot repeats the last real position
    mask = cache.attention_mask()
    assert mask.shape == (2, 1, 2, 4) and mask.dtype == torch.bool
    assert mask[0, 0].tolist() == [[True, True, True, True], [True, True, True, True]]
    assert mask[1, 0].tolist() == [[True, False, False, False], [True, True, False, False]]
    window = cache.attention_mask(sliding_window=2)
    assert window[0, 0, 0].tolist() == [False, False, True, True]
    assert window[1, 0, 1].tolist() == [True, True, False, False]
    cache.release()


def test_cache_api_sizes():
    a, b = new_kvs(2)
    run_pass([a, b], [2, 5], seed=0)
    cache, states = run_pass([a, b], [1, 1], seed=1, layers=[0], commit=False)
    assert cache.get_seq_length(0) == 6 and cache.get_seq_length(1) == 5  # layer 1 not yet written
    assert cache.get_mask_sizes(1, 0) == (6, 0)
    assert cache.get_max_length() == -1


def test_written_rows_are_committed_only_when_every_layer_wrote_them():
    (kv,) = new_kvs(1)
    _, first = run_pass([kv], [4], seed=0)
    cache, _ = run_pass([kv], [1], seed=1, layers=[0], commit=False)
    assert kv.num_tokens == 4 and kv.keys(0).shape == (KV_HEADS, 4, HEAD_DIM)
    with pytest.raises(RuntimeError, match=r"layers \[1\]"):
        cache.commit()
    cache.release()  # abandoned: the pass's rows are never part of the cache
    assert kv.num_tokens == 4
    torch.testing.assert_close(kv.keys(0), expected_keys([(first, 0, 4)], 0))
    _, third = run_pass([kv], [2], seed=2)
    assert kv.num_tokens == 6
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(kv.keys(layer), expected_keys([(first, 0, 4), (third, 0, 2)], layer))
        torch.testing.assert_close(kv.values(layer), kv.keys(layer) + 1)


def test_a_sequence_in_an_unfinished_pass_cannot_join_another():
    a, b = new_kvs(2)
    suspended, _ = run_pass([a], [2], seed=0, layers=[0], commit=False)
    with pytest.raises(ValueError, match="unfinished"):
        UnifiedDynamicCache([a, b], [2, 2], NUM_LAYERS)
    with pytest.raises(RuntimeError, match="unfinished"):
        a.free()
    suspended.release()
    UnifiedDynamicCache([a, b], [2, 2], NUM_LAYERS).release()


def test_bad_batches_are_rejected():
    (kv,) = new_kvs(1)
    with pytest.raises(ValueError, match="twice"):
        UnifiedDynamicCache([kv, kv], [1, 1], NUM_LAYERS)
    with pytest.raises(ValueError, match="at least one token"):
        UnifiedDynamicCache([kv], [0], NUM_LAYERS)
    with pytest.raises(ValueError, match="one or more"):
        UnifiedDynamicCache([], [], NUM_LAYERS)


def test_a_sequence_moves_between_batches_with_its_cache_intact():
    a, b, c = new_kvs(3)
    _, first = run_pass([a, b], [3, 2], seed=0)
    _, second = run_pass([c, a], [5, 1], seed=1)  # a joins c, b sits out: blocks stay where they are
    _, third = run_pass([b, a], [1, 1], seed=2)  # a joins b later: nothing copied, nothing recomputed
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(
            a.keys(layer), expected_keys([(first, 0, 3), (second, 1, 1), (third, 1, 1)], layer)
        )
        torch.testing.assert_close(b.keys(layer), expected_keys([(first, 1, 2), (third, 0, 1)], layer))
        torch.testing.assert_close(c.keys(layer), expected_keys([(second, 0, 5)], layer))


def test_a_suspended_pass_is_untouched_by_batches_run_meanwhile():
    a, b, c = new_kvs(3)
    _, first = run_pass([a, b, c], [2, 2, 2], seed=0)
    suspended, second = run_pass([a, b], [1, 1], seed=1, layers=[0], commit=False)
    _, other = run_pass([c], [30], seed=2)  # c grows the pool while a and b's pass is suspended
    suspended.update(second[1], second[1] + 1, 1)  # resume: the last layer
    suspended.commit()
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(a.keys(layer), expected_keys([(first, 0, 2), (second, 0, 1)], layer))
        torch.testing.assert_close(b.keys(layer), expected_keys([(first, 1, 2), (second, 1, 1)], layer))
        torch.testing.assert_close(c.keys(layer), expected_keys([(first, 2, 2), (other, 0, 30)], layer))


def test_blocks_are_taken_as_a_sequence_grows_and_given_back_when_it_is_freed():
    pool = new_pool()
    a, b = SequenceKV(pool), SequenceKV(pool)
    history = [(run_pass([a, b], [BLOCK_SIZE, 1], seed=0)[1], 0, BLOCK_SIZE)]
    assert (len(a.blocks), len(b.blocks)) == (1, 1) and pool.used_bytes == 2 * pool.block_bytes
    for step in range(BLOCK_SIZE + 1):  # a crosses into its second and third block; b into its second
        history.append((run_pass([a, b], [1, 1], seed=1 + step)[1], 0, 1))
    assert (len(a.blocks), len(b.blocks)) == (3, 2) and pool.num_used == 5
    assert pool.capacity > 6  # grown, with the padding block
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(a.keys(layer), expected_keys(history, layer))
    b.free()
    assert b.blocks == [] and b.num_tokens == 0 and pool.num_used == 3
    c = SequenceKV(pool)
    run_pass([c], [2 * BLOCK_SIZE], seed=99)
    assert pool.num_used == 5 and set(c.blocks) <= set(range(1, pool.capacity))  # b's blocks taken again


def test_slots_no_token_was_written_to_read_as_zeros_under_the_mask():
    """A reused block keeps stale values (finite) and a new one zeros: never NaN, which 0 * NaN would spread."""
    a, b = new_kvs(2)
    cache, _ = run_pass([a, b], [5, 1], seed=0, layers=[0], commit=False)
    keys, _ = cache.update(new_states([5, 1], seed=1)[1], new_states([5, 1], seed=1)[1], 1)
    assert torch.isfinite(keys).all() and (keys[1, :, 1:] == 0).all()  # b's key slots past its token
    cache.release()
