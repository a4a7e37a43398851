"""int8 per-channel codec: error bound, size ratio, through the disk tier."""

from __future__ import annotations

import torch
from store_kvgen import FP, make_kv

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.codec import Int8ChannelCodec, max_abs_error_bound
from chunkcache.store.config import StoreConfig, TierConfig


def test_int8_error_bound_and_ratio():
    x = torch.randn(3, 2, 256, 64) * torch.linspace(0.1, 10, 64)  # channels of very different scale
    x[0, 0, :, 5] = 0.0  # an all-zero channel
    codec = Int8ChannelCodec()
    parts = codec.encode(x)
    y = codec.decode(parts, torch.float32)
    assert y.shape == x.shape and torch.all(y[0, 0, :, 5] == 0)
    assert torch.all((y - x).abs() <= max_abs_error_bound(x) * (1 + 1e-5) + 1e-7)
    stored = sum(p.nbytes for p in parts.values())
    assert x.nbytes / stored > 3.9  # fp32 -> int8 + fp32 scales per channel
    one = codec.decode({k: v[1] for k, v in parts.items()}, torch.float32)  # one layer alone
    assert torch.equal(one, y[1])


def test_int8_disk_tier_roundtrip(tmp_path):
    kv = make_kv(1, 128, n_layers=3, head_dim=16)
    tiers = (TierConfig("cpu", budget_bytes=1 << 20), TierConfig("disk", codec="int8", write_through=True))
    cfg = StoreConfig(tiers=tiers, cache_dir=str(tmp_path))
    with ChunkStore(cfg) as store:
        store.put(kv)
        store.flush()  # the disk write is queued behind the CPU tier's copy
        path = store.tier("disk").path(kv.key)
        assert kv.nbytes / path.stat().st_size > 3.0  # header and token ids included
    with ChunkStore(cfg) as store:
        got = store.get(kv.key, FP)
        assert got is not None and got.token_ids == kv.token_ids and got.keys.dtype == torch.float32
        for a, b in ((got.keys, kv.keys), (got.values, kv.values)):
            assert torch.all((a - b).abs() <= max_abs_error_bound(b) * (1 + 1e-5) + 1e-7)
        assert not torch.equal(got.keys, kv.keys)  # lossy: it came through the int8 codec
    with ChunkStore(cfg) as store:  # a fresh store: the layers stream from the disk file, decoded one by one
        layers = list(store.get_layers(kv.key, FP))
    assert [i for i, _, _ in layers] == [0, 1, 2]
    for i, k, v in layers:  # each layer against the original KV, not against another decode of the file
        for a, b in ((k, kv.keys[i]), (v, kv.values[i])):
            assert a.dtype == torch.float32 and a.shape == b.shape
            assert torch.all((a - b).abs() <= max_abs_error_bound(b) * (1 + 1e-5) + 1e-7)
        assert torch.equal(k, got.keys[i]) and torch.equal(v, got.values[i])  # streamed == whole read
