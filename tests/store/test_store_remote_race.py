"""A shared Redis entry is deleted only when it is known bad: a failed verification is read again once,
and an entry another replica replaced meanwhile is kept; a transient read error never drops an entry."""

from __future__ import annotations

import pytest
import redis
import torch
from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig
from chunkcache.store.errors import EntryUnavailable
from chunkcache.store.layer_stream import LayerStream
from chunkcache.store.tier import LayerSource


def remote_only(url: str) -> ChunkStore:
    return ChunkStore(StoreConfig(tiers=(TierConfig("remote", url=url),), catalog=False, promote_on_hit=False))


def rewritten(kv: ChunkKV) -> ChunkKV:
    """Another replica's computation of the same chunk: same key and size, other bytes."""
    return ChunkKV(kv.key, kv.fingerprint, kv.token_ids, kv.base_position, kv.keys + 1e-3, kv.values - 1e-3)


def test_entry_replaced_between_header_and_layers_is_kept(redis_url: str) -> None:
    kv = make_kv(1, 64)
    other = rewritten(kv)
    with remote_only(redis_url) as reader, remote_only(redis_url) as replica:
        assert replica.put(kv)
        stream = reader.get_layers(kv.key, FP)  # header read now, layers when iterated
        assert stream is not None
        assert replica.put(other)  # the other node's write lands in between
        with pytest.raises(EntryUnavailable) as err:
            list(stream)
        assert err.value.reason.value == "checksum_mismatch" and not err.value.drop
        assert reader.stats()["fallbacks"] == {"checksum_mismatch": 1}
        assert same(reader.get(kv.key, FP), other)  # the replica's entry survived, whole


def test_corrupt_layer_is_still_dropped_after_the_re_read(redis_url: str) -> None:
    kv = make_kv(2, 64)
    client = redis.Redis.from_url(redis_url)
    name = "chunkcache:kv:" + kv.key
    with remote_only(redis_url) as store:
        assert store.put(kv)
        blob = bytearray(client.get(name))
        blob[-5] ^= 0x20  # inside the last layer of "values"
        client.set(name, bytes(blob))
        stream = store.get_layers(kv.key, FP)
        assert stream is not None
        with pytest.raises(EntryUnavailable) as err:
            list(stream)
        assert err.value.drop and not client.exists(name)
    client.close()


def test_transient_read_error_mid_stream_does_not_drop() -> None:
    """An OSError inside a layer read (EIO, a closed socket) cannot be caused on demand: a source raises it."""
    kv = make_kv(3)

    def read(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == 2:
            raise OSError(5, "Input/output error")
        return kv.keys[i], kv.values[i]

    faults: list[EntryUnavailable] = []
    src = LayerSource(kv.key, kv.fingerprint, kv.token_ids, kv.base_position, kv.keys.shape[0], read=read)
    stream = LayerStream(src, "disk", "cpu", copy=True, on_fault=faults.append)
    with pytest.raises(EntryUnavailable):
        list(stream)
    assert [(f.reason.value, f.drop) for f in faults] == [("io_error", False)]
