"""get_layers(borrow=True): a memory tier lends its tensors; default streams hand out copies."""

import torch
from store_kvgen import FP, make_kv

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig


def test_borrowed_layers_equal_the_entry_and_copies_are_independent():
    store = ChunkStore(StoreConfig.memory_only())
    kv = make_kv(3)
    store.put(kv)
    borrowed = list(store.get_layers(kv.key, FP, borrow=True))
    assert [i for i, _, _ in borrowed] == list(range(4))
    for i, k, v in borrowed:
        assert torch.equal(k, kv.keys[i]) and torch.equal(v, kv.values[i])
    copies = list(store.get_layers(kv.key, FP))
    for _, k, _ in copies:
        k.fill_(0)  # a copy: scribbling on it leaves the cache intact
    again = store.get(kv.key, FP)
    assert torch.equal(again.keys, kv.keys)
    assert copies[0][1].data_ptr() != borrowed[0][1].data_ptr()
