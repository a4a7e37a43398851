"""Chunk KV through a real LMCache server (`python -m lmcache.v1.server`), in LMCache's own format.

LMCache 0.5.6 is an optional extra built from its sdist (README, "LMCache interop"); `.ci/run` builds
and installs it and sets CHUNKCACHE_REQUIRE_LMCACHE=1, so there these tests fail when LMCache is missing;
elsewhere they are deselected (tests/conftest.py says so in the summary), never skipped.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from servers import free_port

from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest

from chunkcache.store.lmcache_tier import LMCacheBridge, LMCacheMismatch

pytestmark = pytest.mark.lmcache

PREFIX = (1, 2, 3)
CHUNKS = [tuple(range(10, 30)), tuple(range(40, 73)), tuple(range(80, 97))]
SUFFIX = (5, 6, 7, 8)


@pytest.fixture(scope="module")
def lmcache_url():  # type: ignore[no-untyped-def]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lmcache.v1.server", "127.0.0.1", str(port), "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lmcache.v1.server did not start: {proc.stderr.read().decode()[-2000:]}", pytrace=False)
            time.sleep(0.1)
    yield f"lmcache://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def bridge(url: str, runner, model_name: str = "tiny-llama", fingerprint: str | None = None) -> LMCacheBridge:  # type: ignore[no-untyped-def]
    return LMCacheBridge(url, model_name=model_name, fingerprint=fingerprint or runner.fingerprint,
                         n_layers=runner.n_layers, n_kv_heads=runner.n_kv_heads, head_dim=runner.head_dim)


class LMCacheClient:
    """LMCache's own client stack, as an LMCache-enabled engine would hold it: connector + CPU backend."""

    def __init__(self, url: str, metadata) -> None:  # type: ignore[no-untyped-def]
        from lmcache.v1.storage_backend.connector.lm_connector import LMCServerConnector
        from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend
        from lmcache.v1.config import LMCacheEngineConfig

        host, port = url.removeprefix("lmcache://").split(":")
        config = LMCacheEngineConfig.from_defaults(chunk_size=256, local_cpu=False, max_local_cpu_size=0.05)
        self.backend = LocalCPUBackend(config, metadata)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.conn = LMCServerConnector(host, int(port), self.loop, self.backend)

    def put(self, key, tensor: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
        from lmcache.v1.memory_management import MemoryFormat

        obj = self.backend.allocate(tensor.shape, tensor.dtype, MemoryFormat.KV_2LTD)
        obj.tensor.copy_(tensor)
        self.put_obj(key, obj)

    def put_obj(self, key, obj) -> None:  # type: ignore[no-untyped-def]
        """Send a memory object and wait until the server holds it."""
        asyncio.run_coroutine_threadsafe(self.conn.put(key, obj), self.loop).result()
        obj.ref_count_down()
        deadline = time.monotonic() + 10  # a PUT has no reply: stored once the server's EXIST says so
        while not self.conn.exists_sync(key):
            assert time.monotonic() < deadline, f"LMCache server never stored {key.to_string()}"
            time.sleep(0.01)

    def get(self, key):  # type: ignore[no-untyped-def]
        obj = asyncio.run_coroutine_threadsafe(self.conn.get(key), self.loop).result()
        out = (obj.tensor.clone(), obj.get_memory_format(), obj.get_dtype())
        obj.ref_count_down()
        return out

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.conn.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_chunkcache_put_reads_back_bit_exact_through_lmcache_client(lmcache_url, tiny_runner) -> None:  # type: ignore[no-untyped-def]
    from lmcache.v1.memory_management import MemoryFormat

    source = ChunkSource(tiny_runner, DictStore(), PREFIX)
    kv = source.compute(CHUNKS[1], PREFIX)  # [n_layers, n_kv, L, d], computed behind PREFIX
    b = bridge(lmcache_url, tiny_runner)
    key = b.put(kv, PREFIX)
    assert key.model_name == "tiny-llama" and key.to_string().startswith("tiny-llama@1@0@")
    client = LMCacheClient(lmcache_url, b.metadata)
    tensor, fmt, dtype = client.get(key)
    n_layers, n_kv, length, d = kv.keys.shape
    assert fmt == MemoryFormat.KV_2LTD and dtype == torch.float32 and tensor.shape == (2, n_layers, length, n_kv * d)
    # LMCache's layout: token-major, heads concatenated per token
    assert torch.equal(tensor[0, 2, 5], kv.keys[2, :, 5].reshape(-1))
    assert torch.equal(tensor[1, 3, length - 1], kv.values[3, :, length - 1].reshape(-1))
    back = b.get(CHUNKS[1], PREFIX)
    assert back.key == kv.key and back.base_position == len(PREFIX)
    assert torch.equal(back.keys, kv.keys) and torch.equal(back.values, kv.values)
    assert b.get(CHUNKS[0], PREFIX) is None and b.get(CHUNKS[1], ()) is None  # the context is part of the key
    client.close()
    b.close()


SEG = 12  # LMCache's chunk size in the engine below: every segment of its prompt is one LMCache chunk
LM_PREFIX = tuple(range(1, 1 + SEG))
LM_CHUNKS = [tuple(range(20 + 20 * i, 20 + 20 * i + SEG)) for i in range(3)]


def lmcache_engine_puts(url: str, runner, metadata) -> None:  # type: ignore[no-untyped-def]
    """What an LMCache-enabled engine stores after prefilling LM_PREFIX + chunk, with LMCache's own classes:
    the model's KV from a Hugging Face forward pass (vLLM's per-layer [2, tokens, heads, head_dim]), keys from
    `ChunkedTokenDatabase.process_tokens` (prefix-chained, chunk_size SEG), memory objects of the shape its
    metadata gives, filled token-major as its connectors fill KV_2LTD."""
    from lmcache.v1.config import LMCacheEngineConfig
    from lmcache.v1.memory_management import MemoryFormat
    from lmcache.v1.token_database import ChunkedTokenDatabase

    db = ChunkedTokenDatabase(LMCacheEngineConfig.from_defaults(chunk_size=SEG), metadata)
    client = LMCacheClient(url, metadata)
    for chunk in LM_CHUNKS:
        tokens = LM_PREFIX + chunk
        with torch.no_grad():
            cache = runner.model(torch.tensor([tokens]), use_cache=True).past_key_values
        layers = [torch.stack([layer.keys[0], layer.values[0]]).transpose(1, 2) for layer in cache.layers]
        for start, end, key in db.process_tokens(torch.tensor(tokens)):
            obj = client.backend.allocate(metadata.get_shapes(end - start)[0], metadata.kv_dtype, MemoryFormat.KV_2LTD)
            for i, kv in enumerate(layers):  # [2, L, n_kv, d] -> [2, L, n_kv * d] at layer i
                obj.tensor[:, i] = kv[:, start:end].reshape(2, end - start, -1)
            client.put_obj(key, obj)
    client.close()


def test_kv_put_by_lmcache_engine_is_blended_by_chunkcache(lmcache_url, tiny_runner) -> None:  # type: ignore[no-untyped-def]
    req = BlendRequest.of(LM_PREFIX, LM_CHUNKS, SUFFIX)
    cfg = BlendConfig(mode="cacheblend", recompute_ratio=0.2)
    expected = Blender(tiny_runner, ChunkSource(tiny_runner, DictStore(), LM_PREFIX)).prefill(req, cfg)

    b = bridge(lmcache_url, tiny_runner, model_name="engine")
    lmcache_engine_puts(lmcache_url, tiny_runner, b.metadata)
    store = DictStore()
    assert all(b.pull(store, ids, ctx) for ids, ctx in [(LM_PREFIX, ()), *[(c, LM_PREFIX) for c in LM_CHUNKS]])
    local = ChunkSource(tiny_runner, DictStore(), LM_PREFIX)
    for chunk in LM_CHUNKS:  # the engine's KV is what chunkcache computes for the chunk behind the prefix
        mine = local.compute(chunk, LM_PREFIX)
        theirs = store.get(local.key(chunk, LM_PREFIX), tiny_runner.fingerprint)
        assert torch.allclose(theirs.keys, mine.keys, atol=1e-5) and torch.allclose(theirs.values, mine.values,
                                                                                     atol=1e-5)
    blended = Blender(tiny_runner, ChunkSource(tiny_runner, store, LM_PREFIX)).prefill(req, cfg)
    assert blended.stats.chunk_misses == 0 and blended.stats.chunk_hits == len(LM_CHUNKS) + 1
    assert torch.allclose(blended.logits, expected.logits, atol=1e-4)
    b.close()


def test_model_fingerprint_or_shape_mismatch_is_refused(lmcache_url, tiny_runner) -> None:  # type: ignore[no-untyped-def]
    bridge(lmcache_url, tiny_runner, model_name="guarded").close()  # records this model under the name
    with pytest.raises(LMCacheMismatch, match="model fingerprint: .* 'guarded' written by fingerprint"):
        bridge(lmcache_url, tiny_runner, model_name="guarded", fingerprint="another-model/v9")

    b = bridge(lmcache_url, tiny_runner, model_name="shapes")
    client = LMCacheClient(lmcache_url, b.metadata)
    wrong = torch.randn(2, tiny_runner.n_layers, len(CHUNKS[0]), 3 * tiny_runner.head_dim)  # 3 KV heads, not 2
    client.put(b.key(CHUNKS[0], PREFIX), wrong)
    client.close()
    with pytest.raises(LMCacheMismatch, match="does not match model 'shapes'"):
        b.get(CHUNKS[0], PREFIX)
    kv = ChunkSource(tiny_runner, DictStore(), PREFIX).compute(CHUNKS[2], PREFIX)
    with pytest.raises(LMCacheMismatch, match="fingerprint"):
        b.put(type(kv)(kv.key, "another-model/v9", kv.token_ids, kv.base_position, kv.keys, kv.values), PREFIX)
    b.close()
