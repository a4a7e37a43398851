"""LayerLoader: chunks laid side by side are written by one cache write per layer, each token rotated by its own
chunk's delta; the cache then holds what writing every chunk on its own gives."""

import torch

from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.layer_loader import LayerLoader

CHUNKS = [(tuple(range(10, 27)), 4), (tuple(range(30, 41)), 21), (tuple(range(50, 63)), 32),  # side by side
          (tuple(range(70, 79)), 50)]  # after a gap (45..49 are left to the caller)


def _expected(runner, source, n):
    """Each chunk written on its own, all layers in one call, rotated by its scalar delta."""
    cache = runner.new_cache(n)
    for ids, offset in CHUNKS:
        kv, _ = source.get(ids)
        cache.write(slice(None), slice(offset, offset + len(ids)), kv.keys, kv.values,
                    rope_delta=offset - kv.base_position)
    return cache


def test_side_by_side_chunks_match_chunk_by_chunk_writes(tiny_runner):
    source = ChunkSource(tiny_runner, DictStore(), context_ids=(1, 2, 3))
    n = 60
    want = _expected(tiny_runner, source, n)
    cache = tiny_runner.new_cache(n)
    loader = LayerLoader(source, cache)
    assert [loader.add(ids, offset) for ids, offset in CHUNKS] == ["chunk_hit"] * len(CHUNKS)  # stored above
    loader.load(1)
    for ids, offset in CHUNKS:  # layers 0..1 written, the rest not yet
        sl = slice(offset, offset + len(ids))
        torch.testing.assert_close(cache.keys[:2, :, sl], want.keys[:2, :, sl], atol=1e-6, rtol=0)
    loader.load_all()
    loader.close()
    assert loader.hits == len(CHUNKS) and loader.misses == 0
    for ids, offset in CHUNKS:
        sl = slice(offset, offset + len(ids))
        torch.testing.assert_close(cache.keys[:, :, sl], want.keys[:, :, sl], atol=1e-6, rtol=0)
        torch.testing.assert_close(cache.values[:, :, sl], want.values[:, :, sl], atol=0, rtol=0)
    assert len(loader._delta_memo) == 1  # one run of three chunks; its deltas made once for every layer


def test_deltas_differ_per_chunk_in_a_run(tiny_runner):
    """The run's per-token deltas: each chunk's offset less its entry's base position, its length times."""
    source = ChunkSource(tiny_runner, DictStore(), context_ids=(1, 2, 3))
    loader = LayerLoader(source, tiny_runner.new_cache(60))
    deltas = loader._deltas(((1, 2), (17, 3)))
    assert deltas.tolist() == [1, 1, 17, 17, 17]


def test_chunk_corrupt_mid_stream_inside_a_run_is_recomputed(tiny_runner, tmp_path):
    """Four chunks side by side on the disk tier, the third with a flipped byte in its last layer: the loader
    has written its earlier layers in the run's writes when the checksum fails; the chunk is recomputed and the
    result equals a clean run's."""
    from chunkcache.blend.blender import Blender
    from chunkcache.blend.config import BlendConfig
    from chunkcache.blend.request import BlendRequest
    from chunkcache.config import StoreSettings
    from chunkcache.store.chunk_store import ChunkStore

    prefix = (1, 2, 3)
    chunks = [tuple(range(10 + 20 * i, 26 + 20 * i)) for i in range(5)]  # chunk 0 goes with the prefix
    req = BlendRequest.of(prefix, chunks, [7, 8, 9])
    clean = Blender(tiny_runner, ChunkSource(tiny_runner, DictStore(), prefix)).prefill(req, BlendConfig(mode="naive"))
    with ChunkStore(StoreSettings().store_config(tmp_path)) as store:
        source = ChunkSource(tiny_runner, store, prefix)
        Blender(tiny_runner, source).prefill(req, BlendConfig(mode="naive"))
        victim = source.key(chunks[3], prefix)
    (path,) = [p for p in tmp_path.rglob("*.safetensors") if victim in p.name]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with ChunkStore(StoreSettings().store_config(tmp_path)) as store:  # cold CPU tier: every read goes to disk
        res = Blender(tiny_runner, ChunkSource(tiny_runner, store, prefix)).prefill(req, BlendConfig(mode="naive"))
    assert len(res.stats.fallbacks) == 1 and "unusable at layer" in res.stats.fallbacks[0], res.stats.fallbacks
    torch.testing.assert_close(res.cache.keys[:, :, :req.num_tokens], clean.cache.keys[:, :, :req.num_tokens])
    torch.testing.assert_close(res.logits, clean.logits)
