"""Unusable cached KV is detected, reported and recomputed: the result equals a clean run."""

import pytest
import torch

from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest
from chunkcache.config import StoreSettings
from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.chunk_store import ChunkStore

PREFIX = (1, 2, 3)
REQ = BlendRequest.of(PREFIX, [tuple(range(10, 30)), tuple(range(40, 71))], [7, 8, 9])


def _clean(tiny_runner, cfg=BlendConfig(mode="naive")):
    return Blender(tiny_runner, ChunkSource(tiny_runner, DictStore(), PREFIX)).prefill(REQ, cfg)


class TrustingStore(DictStore):
    """A store that hands back whatever sits under a key (no fingerprint check): the blender must catch it."""

    def get(self, key, fingerprint, device="cpu"):
        return self._items.get(key)


@pytest.mark.parametrize("problem", ["fingerprint", "shape", "token_ids"])
def test_bad_entry_falls_back_to_recompute(tiny_runner, problem):
    store = TrustingStore()
    source = ChunkSource(tiny_runner, store, PREFIX)
    chunk = REQ.chunks[1]
    good = source.compute(chunk, PREFIX)
    fields = dict(key=good.key, fingerprint=good.fingerprint, token_ids=good.token_ids,
                  base_position=good.base_position, keys=good.keys, values=good.values)
    if problem == "fingerprint":
        fields["fingerprint"] = "0" * 32
    elif problem == "shape":
        fields.update(token_ids=chunk[:-1], keys=good.keys[:, :, :-1], values=good.values[:, :, :-1])
    else:
        fields["token_ids"] = tuple(reversed(chunk))
    store._items[good.key] = ChunkKV(**fields)
    res = Blender(tiny_runner, source).prefill(REQ, BlendConfig(mode="naive"))
    assert len(res.stats.fallbacks) == 1 and good.key[:12] in res.stats.fallbacks[0]
    torch.testing.assert_close(res.logits, _clean(tiny_runner).logits)
    assert store._items[good.key].fingerprint == good.fingerprint  # the recomputed entry replaced the bad one


@pytest.mark.parametrize("cfg", [BlendConfig(mode="naive"), BlendConfig(mode="cacheblend", recompute_ratio=0.3)])
def test_corrupt_disk_entry_is_recomputed(tiny_runner, tmp_path, cfg):
    """A flipped byte in the last layer of each file on the disk tier: detected (at open, or mid-stream while
    earlier layers are already placed) and recomputed; the result equals a clean run."""
    store = ChunkStore(StoreSettings().store_config(tmp_path))
    source = ChunkSource(tiny_runner, store, PREFIX)
    Blender(tiny_runner, source).prefill(REQ, BlendConfig(mode="naive"))
    store.close()
    files = sorted(p for p in tmp_path.rglob("*.safetensors"))
    assert files, "disk tier wrote nothing"
    for f in files:
        data = bytearray(f.read_bytes())
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
    store = ChunkStore(StoreSettings().store_config(tmp_path))  # cold CPU tier: every read goes to disk
    res = Blender(tiny_runner, ChunkSource(tiny_runner, store, PREFIX)).prefill(REQ, cfg)
    assert res.stats.chunk_hits == 0 and res.stats.chunk_misses == 3
    # the prefix and chunk 0 fail when opened (inside the store), chunk 1 mid-stream: all three are reported
    assert len(res.stats.fallbacks) == 3, res.stats.fallbacks
    assert all(f.startswith("checksum_mismatch: ") for f in res.stats.fallbacks), res.stats.fallbacks
    torch.testing.assert_close(res.logits, _clean(tiny_runner, cfg).logits)
    store.close()


def test_truncated_disk_entry_is_reported(tiny_runner, tmp_path):
    """A disk entry cut to half its size: the store refuses it while opening; the request says so."""
    with ChunkStore(StoreSettings().store_config(tmp_path)) as store:
        Blender(tiny_runner, ChunkSource(tiny_runner, store, PREFIX)).prefill(REQ, BlendConfig(mode="naive"))
    files = sorted(tmp_path.rglob("*.safetensors"), key=lambda f: f.stat().st_size)
    victim = files[-1]  # the longest chunk
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with ChunkStore(StoreSettings().store_config(tmp_path)) as store:
        res = Blender(tiny_runner, ChunkSource(tiny_runner, store, PREFIX)).prefill(REQ, BlendConfig(mode="naive"))
    assert res.stats.chunk_hits == 2 and res.stats.chunk_misses == 1
    assert len(res.stats.fallbacks) == 1 and res.stats.fallbacks[0].split(":")[0] in ("corrupt", "checksum_mismatch")
    assert "disk tier" in res.stats.fallbacks[0]
    torch.testing.assert_close(res.logits, _clean(tiny_runner).logits)


def test_disk_store_survives_restart(tiny_runner, tmp_path):
    with ChunkStore(StoreSettings().store_config(tmp_path)) as store:
        first = Blender(tiny_runner, ChunkSource(tiny_runner, store, PREFIX)).prefill(REQ, BlendConfig(mode="naive"))
    with ChunkStore(StoreSettings().store_config(tmp_path)) as store:
        again = Blender(tiny_runner, ChunkSource(tiny_runner, store, PREFIX)).prefill(REQ, BlendConfig(mode="naive"))
        assert isinstance(store, ChunkStore)
    assert again.stats.chunk_hits == 3 and again.stats.chunk_misses == 0
    torch.testing.assert_close(again.logits, first.logits)


@pytest.mark.parametrize("kw, field", [({"mode": "fast"}, "mode"), ({"recompute_ratio": 1.5}, "recompute_ratio"),
                                       ({"check_layers": (0,)}, "check_layers"), ({"selection": "x"}, "selection"),
                                       ({"deviation_on": "q"}, "deviation_on"),
                                       ({"adaptive_mass": 0}, "adaptive_mass")])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        BlendConfig(**kw)


@pytest.mark.parametrize("args, msg", [((PREFIX, [], [1]), "chunk list is empty"),
                                       ((PREFIX, [(1, 2), ()], [1]), r"chunks\[1\] is empty"),
                                       ((PREFIX, [(1, 2)], []), "suffix_ids is empty")])
def test_bad_request_names_the_problem(args, msg):
    with pytest.raises(ValueError, match=msg):
        BlendRequest.of(*args)
