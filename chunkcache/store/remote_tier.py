"""Remote tier: a Redis or Valkey server shared by several nodes (redis-py).

Each chunk is one Redis string <key_prefix><key> holding the same checksummed safetensors bytes as
a disk file (entry_format.py), so a reader verifies what another node wrote. The server owns the
budget and eviction (`maxmemory`, `maxmemory-policy allkeys-lru`); ttl_s optionally expires
entries. A connection error or timeout marks the server down for retry_after_s: meanwhile reads
are misses with reason remote_unavailable and writes fail fast, so a dead server costs one
timeout, not one per request. A SET is atomic, so concurrent writers of one key never interleave.
`open_layers` reads the header with GETRANGE and then each layer's bytes when the stream's reader
thread asks for them, so a remote chunk loads while the model computes earlier layers, as the disk
tier does. Every layer is checked against the header's checksums; if another node replaced or Redis
evicted the entry meanwhile, the read fails verification and the caller recomputes.
"""

from __future__ import annotations

import threading
import time

import torch

from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.entry_format import check, decode_buffer, encode, header_length, parse_header, read_layer
from chunkcache.store.errors import EntryUnavailable, Reason, TierWriteError
from chunkcache.store.tier import LayerSource


class RemoteTier:
    kind = "remote"
    persistent = True

    def __init__(self, url: str, *, key_prefix: str = "chunkcache:kv:", codec: str = "none",
                 ttl_s: int | None = None, timeout_s: float = 2.0, retry_after_s: float = 5.0) -> None:
        import redis  # optional dependency: only a store with a remote tier needs it

        self._errors = (redis.exceptions.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.url = url
        self.key_prefix = key_prefix
        self.codec = codec
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._lock = threading.Lock()

    def _name(self, key: str) -> str:
        return self.key_prefix + key

    def _check_up(self) -> str | None:
        with self._lock:
            if time.monotonic() < self._down_until:
                return f"{self.url} marked down for {self._down_until - time.monotonic():.1f} s more"
        return None

    def _mark_down(self) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self.retry_after_s

    def _fetch(self, key: str) -> bytes:
        down = self._check_up()
        if down:
            raise EntryUnavailable(Reason.REMOTE_UNAVAILABLE, down, drop=False)
        try:
            data = self.client.get(self._name(key))
        except self._errors as e:
            self._mark_down()
            raise EntryUnavailable(Reason.REMOTE_UNAVAILABLE, f"{self.url}: {e}", drop=False) from e
        if data is None:
            raise KeyError(key)
        return data

    def put(self, kv: ChunkKV) -> int:
        data = encode(kv, self.codec)
        down = self._check_up()
        if down:
            raise TierWriteError(Reason.REMOTE_UNAVAILABLE, down)
        try:
            self.client.set(self._name(kv.key), data, ex=self.ttl_s)
        except self._errors as e:
            self._mark_down()
            raise TierWriteError(Reason.REMOTE_UNAVAILABLE, f"{self.url}: {e}") from e
        return len(data)

    def get(self, key: str, fingerprint: str | None) -> ChunkKV:
        data = self._fetch(key)
        return decode_buffer(torch.frombuffer(bytearray(data), dtype=torch.uint8), key, fingerprint)

    def _range(self, name: str, offset: int, nbytes: int) -> bytes:
        """nbytes of the entry from offset (GETRANGE); a shorter answer means the entry changed or went."""
        try:
            data = self.client.getrange(name, offset, offset + nbytes - 1)
        except self._errors as e:
            self._mark_down()
            raise EntryUnavailable(Reason.REMOTE_UNAVAILABLE, f"{self.url}: {e}", drop=False) from e
        if len(data) != nbytes:
            raise EntryUnavailable(Reason.CORRUPT, f"entry changed or vanished while read ({len(data)} of {nbytes} "
                                                   f"bytes at {offset})", drop=False)
        return data

    def open_layers(self, key: str, fingerprint: str) -> LayerSource:
        down = self._check_up()
        if down:
            raise EntryUnavailable(Reason.REMOTE_UNAVAILABLE, down, drop=False)
        name = self._name(key)
        try:
            total = self.client.strlen(name)
        except self._errors as e:
            self._mark_down()
            raise EntryUnavailable(Reason.REMOTE_UNAVAILABLE, f"{self.url}: {e}", drop=False) from e
        if not total:
            raise KeyError(key)
        first8 = self._range(name, 0, min(8, total))
        header = parse_header(self._range(name, 0, min(header_length(first8), total)), total)
        check(header, key, fingerprint)

        def reader(offset: int, nbytes: int) -> torch.Tensor:
            return torch.frombuffer(bytearray(self._range(name, offset, nbytes)), dtype=torch.uint8)

        return LayerSource(header.key, header.fingerprint, header.token_ids, header.base_position,
                           header.n_layers, read=lambda i: read_layer(header, reader, i))

    def delete(self, key: str) -> None:
        if self._check_up():
            return
        try:
            self.client.delete(self._name(key))
        except self._errors:
            self._mark_down()

    def contains(self, key: str) -> bool:
        if self._check_up():
            return False
        try:
            return bool(self.client.exists(self._name(key)))
        except self._errors:
            self._mark_down()
            return False

    def scan(self) -> list[tuple[str, int]]:
        return []  # shared server: this node does not index or budget it

    def close(self) -> None:
        try:
            self.client.close()
        except self._errors:
            pass
