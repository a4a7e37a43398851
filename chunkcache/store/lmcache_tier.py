"""A bridge to an LMCache server: chunk KV in LMCache's own format, keys and client code.

`pip install chunkcache[lmcache]` is not enough on its own: LMCache 0.5.6 is built from its sdist
without CUDA (README, "LMCache interop"). Everything LMCache-specific here is LMCache's own code:
- the client is `LMCServerConnector` over a `LocalCPUBackend` that allocates its memory objects; it
  speaks `lmcache.v1.protocol` to `python -m lmcache.v1.server HOST PORT cpu`;
- values are `MemoryFormat.KV_2LTD` tensors, [2 (K, V), n_layers, n_tokens, n_kv_heads * head_dim];
- keys are `CacheEngineKey(model_name, 1, 0, chunk_hash, dtype)` from LMCache's `ChunkedTokenDatabase`:
  its token hash of the chunk chained on the hash of the context the chunk was computed behind (what
  `process_tokens` gives a chunk behind a one-chunk context). That hash of a chunk of any length has no
  public form: the bridge calls `_hash_tokens` and accepts only the version it is tested with.
A model record (a BINARY_BUFFER object under the model's key tagged `chunkcache%model`) holds the fingerprint
of the model that wrote KV under `model_name`; another fingerprint, or KV of another shape or dtype, is
refused with `LMCacheMismatch`. Every call waits at most `timeout_s`; a call that fails (no answer in time,
a reset or closed connection, a garbled reply) closes the bridge, its thread and its socket and raises
`LMCacheUnavailable`, and so does a constructor that fails after connecting.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import threading
from urllib.parse import urlparse

import torch

from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.keys import chunk_key

MODEL_TAG = {"lmcache.tag.chunkcache": "model"}
LMCACHE_VERSION = "0.5.6"  # the one version the key scheme (its private _hash_tokens) is tested against


class LMCacheMismatch(ValueError):
    """KV under this key was written by another model, or does not have this model's shape or dtype."""


class LMCacheUnavailable(ConnectionError):
    """The LMCache server did not answer within timeout_s, or the connection failed; the bridge is closed."""


class LMCacheBridge:
    """url: "lmcache://host:port" (an `lmcache.v1.server`). model_name: LMCache's model name in every key.
    fingerprint, n_layers, n_kv_heads, head_dim, dtype: this model's (ModelRunner's) identity and KV shape.
    buffer_gib: LMCache's local CPU buffer that memory objects are allocated from (a chunk must fit).
    timeout_s: the longest wait of any call (the connection, each send, each reply)."""

    def __init__(self, url: str, *, model_name: str, fingerprint: str, n_layers: int, n_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, buffer_gib: float = 0.25,
                 timeout_s: float = 5.0) -> None:
        try:
            from lmcache.v1.config import LMCacheEngineConfig
            from lmcache.v1.metadata import LMCacheMetadata
            from lmcache.v1.storage_backend.connector.lm_connector import LMCServerConnector
            from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend
            from lmcache.v1.token_database import ChunkedTokenDatabase
        except ImportError as err:
            raise ImportError(f"the LMCache bridge needs lmcache {LMCACHE_VERSION} (README, 'LMCache interop'): "
                              f"{err}") from err
        found = importlib.metadata.version("lmcache")
        if found != LMCACHE_VERSION:
            raise ImportError(f"the LMCache bridge is tested with lmcache {LMCACHE_VERSION} only (its keys use a "
                              f"private LMCache hash function); found {found}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
        u = urlparse(url)
        if u.scheme != "lmcache" or not u.hostname or not u.port:
            raise ValueError(f"url: expected lmcache://host:port, got {url!r}")
        if "@" in model_name or not model_name:
            raise ValueError(f"model_name: must be non-empty without '@' (LMCache's key separator), got {model_name!r}")
        self.url, self.model_name, self.fingerprint, self.dtype = url, model_name, fingerprint, dtype
        self.timeout_s = timeout_s
        self.n_layers, self.hidden = n_layers, n_kv_heads * head_dim
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        config = LMCacheEngineConfig.from_defaults(chunk_size=256, local_cpu=False, max_local_cpu_size=buffer_gib,
                                                   remote_url=None)
        self.metadata = LMCacheMetadata(model_name=model_name, world_size=1, local_world_size=1, worker_id=0,
                                        local_worker_id=0, kv_dtype=dtype,
                                        kv_shape=(n_layers, 2, 256, n_kv_heads, head_dim))
        try:  # the connector connects without a timeout: first check that the server accepts within ours
            socket.create_connection((u.hostname, u.port), timeout=timeout_s).close()
        except OSError as err:
            raise LMCacheUnavailable(f"url: cannot reach the LMCache server at {url} within {timeout_s:g}s: "
                                     f"{err}") from err
        self.backend = LocalCPUBackend(config, self.metadata)
        self.tokens = ChunkedTokenDatabase(config, self.metadata)
        self.client = None
        self._closed: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chunkcache-lmcache", daemon=True)
        self._thread.start()
        try:
            self.client = LMCServerConnector(u.hostname, u.port, self._loop, self.backend)
            self.client.client_socket.settimeout(timeout_s)  # every blocking send and receive
            self._check_model()
        except BaseException as err:  # a timeout, a refused connection, a mismatch: nothing left open
            self.close(f"{type(err).__name__} at start")
            if isinstance(err, OSError) and not isinstance(err, LMCacheUnavailable):
                raise LMCacheUnavailable(f"url: cannot reach the LMCache server at {url}: {err}") from err
            raise

    def key(self, token_ids: tuple[int, ...], context_ids: tuple[int, ...] = (),  # type: ignore[no-untyped-def]
            tags: dict | None = None):
        """LMCache's CacheEngineKey of a chunk computed behind context_ids: its token database's hash of the
        chunk chained on the context's, made a key by the public `process_tokens`."""
        prefix = self.tokens._hash_tokens(list(context_ids)) if context_ids else None
        chunk_hash = self.tokens._hash_tokens(list(token_ids), prefix)
        (_, _, key), = self.tokens.process_tokens(hashes=[chunk_hash], offsets=[len(token_ids)],
                                                  request_configs=tags)
        return key

    def to_kv_2ltd(self, kv: ChunkKV) -> torch.Tensor:
        """[n_layers, n_kv, L, d] K and V -> LMCache's KV_2LTD [2, n_layers, L, n_kv * d]."""
        self._check_shape(tuple(kv.keys.shape), kv.keys.dtype, f"chunk {kv.key[:12]}")
        n_layers, n_kv, length, d = kv.keys.shape
        return torch.stack([kv.keys, kv.values]).permute(0, 1, 3, 2, 4).reshape(2, n_layers, length, n_kv * d)

    def _check_shape(self, shape: tuple[int, ...], dtype: torch.dtype, what: str) -> None:
        want = (self.n_layers, self.n_kv_heads, shape[2] if len(shape) == 4 else -1, self.head_dim)
        if tuple(shape) != want or dtype != self.dtype:
            raise LMCacheMismatch(f"{what}: KV {tuple(shape)} {dtype} does not match model {self.model_name!r} "
                                  f"({want[0]} layers, {want[1]} KV heads, head_dim {want[3]}, {self.dtype})")

    def _run(self, coro, what: str):  # type: ignore[no-untyped-def]
        """The coroutine's result within timeout_s; any failure closes the bridge (LMCacheUnavailable)."""
        if self._closed is not None:
            coro.close()
            self._check_open(what)
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout_s)
        except Exception as err:  # noqa: BLE001 - a timeout, a socket error, a garbled reply: all unusable
            future.cancel()
            reason = f"no answer within {self.timeout_s:g}s" if isinstance(err, TimeoutError) else \
                f"{type(err).__name__}: {err}"
            self.close(reason)
            raise LMCacheUnavailable(f"{what}: the LMCache server at {self.url} failed ({reason}); bridge closed") \
                from err

    def _check_open(self, what: str) -> None:
        if self._closed is not None:  # its buffer is freed and its connection gone
            raise LMCacheUnavailable(f"{what}: the bridge to {self.url} is closed ({self._closed})")

    def _put_tensor(self, key, tensor: torch.Tensor, fmt) -> None:  # type: ignore[no-untyped-def]
        self._check_open("PUT")
        obj = self.backend.allocate(tensor.shape, tensor.dtype, fmt)
        if obj is None:
            raise MemoryError(f"LMCache buffer cannot hold {tensor.numel() * tensor.element_size()} bytes: "
                              f"raise buffer_gib")
        try:
            obj.tensor.copy_(tensor)
            self._run(self.client.put(key, obj), "PUT")
        finally:
            obj.ref_count_down()
        self._stored(key)

    def _stored(self, key) -> None:  # type: ignore[no-untyped-def]
        """A PUT has no reply; the server serves one connection in order, so an EXIST after it on the same
        connection answers once the PUT is stored (then other connections see it too)."""
        if not self._run(self.client.exists(key), "EXIST"):
            raise ConnectionError(f"the LMCache server at {self.url} did not store {key.to_string()}")

    def _get(self, key) -> tuple[torch.Tensor | bytes, object] | None:  # type: ignore[no-untyped-def]
        """(a tensor, or bytes for a BINARY_BUFFER object, and its MemoryFormat); None on a miss."""
        from lmcache.v1.memory_management import MemoryFormat

        self._check_open("GET")
        obj = self._run(self.client.get(key), "GET")
        if obj is None:
            return None
        try:
            fmt = obj.get_memory_format()
            return (bytes(obj.byte_array) if fmt == MemoryFormat.BINARY_BUFFER else obj.tensor.clone()), fmt
        finally:
            obj.ref_count_down()

    def _check_model(self) -> None:
        from lmcache.v1.memory_management import BytesBufferMemoryObj

        key = self.key((), (), MODEL_TAG)
        found = self._get(key)
        if found is None:
            self._run(self.client.put(key, BytesBufferMemoryObj(bytearray(self.fingerprint.encode()))), "PUT")
            self._stored(key)
            return
        recorded = bytes(found[0]).decode(errors="replace") if isinstance(found[0], bytes) else repr(found[1])
        if recorded != self.fingerprint:
            raise LMCacheMismatch(f"model fingerprint: LMCache at {self.url} holds KV of model {self.model_name!r} "
                                  f"written by fingerprint {recorded!r}; this engine's model is {self.fingerprint!r}")

    def put(self, kv: ChunkKV, context_ids: tuple[int, ...] = ()):  # type: ignore[no-untyped-def]
        """Store a chunk's KV in LMCache (KV_2LTD); returns its CacheEngineKey."""
        from lmcache.v1.memory_management import MemoryFormat

        if kv.fingerprint != self.fingerprint:
            raise LMCacheMismatch(f"chunk {kv.key[:12]}: fingerprint {kv.fingerprint!r} is not this bridge's "
                                  f"model {self.fingerprint!r}")
        if kv.base_position != len(context_ids):
            raise ValueError(f"context_ids: the chunk was computed behind {kv.base_position} tokens, "
                             f"got {len(context_ids)}")
        key = self.key(kv.token_ids, context_ids)
        self._put_tensor(key, self.to_kv_2ltd(kv).contiguous(), MemoryFormat.KV_2LTD)
        return key

    def get(self, token_ids: tuple[int, ...], context_ids: tuple[int, ...] = ()) -> ChunkKV | None:
        """The chunk's KV from LMCache as a ChunkKV under chunkcache's own key; None when LMCache misses."""
        from lmcache.v1.memory_management import MemoryFormat

        found = self._get(self.key(token_ids, context_ids))
        if found is None:
            return None
        t, fmt = found
        if fmt != MemoryFormat.KV_2LTD or not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[0] != 2:
            raise LMCacheMismatch(f"LMCache entry has format {fmt} shape {tuple(t.shape)}, expected KV_2LTD")
        _, n_layers, length, hidden = t.shape
        if length != len(token_ids) or hidden != self.hidden or n_layers != self.n_layers or t.dtype != self.dtype:
            raise LMCacheMismatch(f"LMCache entry KV_2LTD {tuple(t.shape)} {t.dtype} does not match model "
                                  f"{self.model_name!r}: expected (2, {self.n_layers}, {len(token_ids)}, "
                                  f"{self.hidden}) {self.dtype}")
        kv = t.reshape(2, n_layers, length, self.n_kv_heads, self.head_dim).permute(0, 1, 3, 2, 4).contiguous()
        return ChunkKV(chunk_key(self.fingerprint, context_ids, token_ids), self.fingerprint, tuple(token_ids),
                       len(context_ids), kv[0], kv[1])

    def pull(self, store, token_ids: tuple[int, ...],  # type: ignore[no-untyped-def]
             context_ids: tuple[int, ...] = ()) -> bool:
        """Copy a chunk's KV from LMCache into a chunkcache store (then requests hit it); False on a miss."""
        kv = self.get(token_ids, context_ids)
        if kv is None:
            return False
        store.put(kv)
        return True

    def close(self, reason: str = "closed") -> None:
        """Close the socket, stop the loop thread, free LMCache's buffer; safe to call again, on any path."""
        if self._closed is not None:
            return
        self._closed = reason
        if self.client is not None:
            try:
                self.client.client_socket.shutdown(socket.SHUT_RDWR)  # wakes a receive blocked in the loop thread
            except OSError:
                pass  # not connected any more
            self.client.client_socket.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.timeout_s + 1)
        if not self._thread.is_alive():
            self._loop.close()
        self.backend.close()
