"""The CPU target's KV cache that grows in place (beagle.target_model.cache.GrowingDynamicLayer): the same keys and
values as transformers' DynamicCache through updates, crops, tree keeps and growth past its buffer."""

import torch
from transformers import DynamicCache

from beagle.target_model.cache import GROWTH_MIN, GrowingDynamicLayer, growing_dynamic_cache, keep_cache_entries
from tests.conftest import make_tiny_target


def _states(generator, count):
    return torch.randn(1, 2, count, 8, generator=generator), torch.randn(1, 2, count, 8, generator=generator)


def _assert_same(growing, stock):
    for mine, theirs in zip(growing.layers, stock.layers):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=0, atol=0)
        torch.testing.assert_close(mine.values, theirs.values, rtol=0, atol=0)
    assert growing.get_seq_length() == stock.get_seq_length()


def test_updates_crops_keeps_and_growth_match_dynamic_cache():
    generator = torch.Generator().manual_seed(0)
    growing, stock = growing_dynamic_cache(), DynamicCache()
    for count in (7, 1, 5, 3):
        keys, values = _states(generator, count)
        for layer in range(2):
            got = growing.update(keys + layer, values - layer, layer)
            want = stock.update(keys + layer, values - layer, layer)
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    assert all(type(layer) is GrowingDynamicLayer for layer in growing.layers)
    _assert_same(growing, stock)
    growing.crop(-4)
    stock.crop(-4)
    _assert_same(growing, stock)
    keep = torch.tensor([0, 2])
    keep_cache_entries(growing, 8, keep)  # of 12 entries: keep 8 and 10, drop the rest
    keep_cache_entries(stock, 8, keep)
    _assert_same(growing, stock)
    assert growing.get_seq_length() == 10
    buffer = growing.layers[0]._key_buffer
    keys, values = _states(generator, 3)
    growing.update(keys, values, 0)
    stock.update(keys, values, 0)
    assert growing.layers[0]._key_buffer is buffer  # written in place
    keys, values = _states(generator, GROWTH_MIN)  # past the buffer: a larger one, same contents
    growing.update(keys, values, 0)
    stock.update(keys, values, 0)
    assert growing.layers[0]._key_buffer is not buffer
    torch.testing.assert_close(growing.layers[0].keys, stock.layers[0].keys, rtol=0, atol=0)


def test_replaced_keys_are_copied_into_a_new_buffer():
    generator = torch.Generator().manual_seed(1)
    growing, stock = growing_dynamic_cache(), DynamicCache()
    for cache in (growing, stock):
        keys, values = _states(torch.Generator().manual_seed(2), 6)
        cache.update(keys, values, 0)
    layer = growing.layers[0]
    layer.keys = layer.keys.clone()  # not a view of the buffer any more
    layer.values = layer.values.clone()
    keys, values = _states(generator, 2)
    growing.update(keys, values, 0)
    stock.update(keys, values, 0)
    _assert_same(growing, stock)


def test_cpu_target_gets_it():
    target = make_tiny_target("llama")
    cache = target.new_cache()
    target.forward(torch.randint(0, target.vocab_size, (1, 5)), cache)
    assert type(cache.layers[0]) is GrowingDynamicLayer and cache.get_seq_length() == 5
