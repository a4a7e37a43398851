"""KVCache: the one writer, RoPE re-positioning exactness, growth and bounds."""

import pytest
import torch

from chunkcache.runner.kv_cache import KVCache


def test_rope_shift_equals_prefill_at_offset(tiny_runner):
    """Keys computed at positions 0..L-1 and rotated by d equal keys computed at d..d+L-1."""
    r = tiny_runner
    hidden = torch.randn(9, 64, generator=torch.Generator().manual_seed(0))
    for layer in (0, 3):
        _, k0, v0 = r.qkv(layer, hidden, torch.arange(0, 9))
        _, kd, vd = r.qkv(layer, hidden, torch.arange(123, 132))
        cache = r.new_cache(200)
        cache.write(layer, slice(123, 132), k0, v0, rope_delta=123)
        k, v = cache.layer(layer)
        torch.testing.assert_close(k[:, 123:132], kd, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v[:, 123:132], vd)


def test_shifted_chunk_equals_chunk_prefilled_at_offset(tiny_runner):
    """Whole-chunk check at layer 0 (where K depends on the token only): stored at 0, placed at 40."""
    r = tiny_runner
    chunk = torch.randint(0, 256, (12,), generator=torch.Generator().manual_seed(4))
    ctx = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(5))
    alone = r.new_cache(12)
    r.extend(chunk, alone)
    behind = r.new_cache(52)
    r.extend(torch.cat((ctx, chunk)), behind)
    placed = r.new_cache(52)
    placed.write(slice(None), slice(40, 52), alone.keys[:, :, :12], alone.values[:, :, :12], rope_delta=40)
    torch.testing.assert_close(placed.keys[0, :, 40:52], behind.keys[0, :, 40:52], atol=1e-5, rtol=1e-5)


def test_write_bounds_and_shapes():
    cache = KVCache(2, 1, 4, 8, torch.ones(2))
    with pytest.raises(ValueError, match="exceeds KVCache capacity"):
        cache.write(0, slice(6, 10), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="do not fit"):
        cache.write(0, slice(0, 3), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="rope_delta"):
        cache.write(0, torch.tensor([1, 2]), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), rope_delta=3)


def test_scattered_write_reserve_and_truncate():
    cache = KVCache(2, 1, 4, 4, torch.ones(2))
    k = torch.arange(8.0).view(1, 2, 4)
    cache.write(1, torch.tensor([0, 3]), k, -k)
    assert cache.length == 4
    torch.testing.assert_close(cache.keys[1, 0, 3], k[0, 1])
    cache.reserve(5)
    assert cache.capacity >= 5 and cache.length == 4
    torch.testing.assert_close(cache.values[1, 0, 3], -k[0, 1])  # valid part survives growth
    cache.truncate(2)
    assert cache.length == 2
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(3)
    with pytest.raises(ValueError, match="capacity must be positive"):
        KVCache(1, 1, 4, 0, torch.ones(2))


def test_to_dynamic_cache_copies_valid_positions(tiny_runner):
    cache = tiny_runner.new_cache(30)
    tiny_runner.extend(torch.arange(20), cache)
    dyn = cache.to_dynamic_cache()
    assert dyn.get_seq_length() == 20
    torch.testing.assert_close(dyn.layers[2].keys[0], cache.keys[2, :, :20])
    with pytest.raises(ValueError):
        cache.to_dynamic_cache(21)
