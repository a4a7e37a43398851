"""Remote tier: a Redis or Valkey server shared by several nodes (redis-py).

Each chunk is one Redis string <key_prefix><key> holding the same checksummed safetensors bytes as
a disk file (entry_format.py), so a reader verifies what another node wrote. The server owns the
budget and eviction (`maxmemory`, `maxmemory-policy allkeys-lru`); ttl_s optionally expires
entries. Only a connection error or timeout marks the server down (the breaker) for retry_after_s:
meanwhile reads are misses with reason remote_unavailable and writes fail fast, so a dead server
costs one timeout, not one per request. An error the server answers with (OOM under `noeviction`,
WRONGTYPE, READONLY) is remote_refused and any other client error remote_error: both fail that one
operation and leave the tier on. A SET is atomic, so concurrent writers of one key never interleave.
`open_layers` reads the header with GETRANGE and then each layer's bytes when the stream's reader
thread asks for them, so a remote chunk loads while the model computes earlier layers, as the disk
tier does. Every layer is checked against the header's checksums. The entry is shared, so before a
failed verification drops it (a DEL every replica sees) the tier reads it again once: if another
node replaced it meanwhile, the fault is reported with drop=False and the new entry stays.
The URL may hold a password: it is used to connect only, and every detail carries `redact_url`.
"""

from __future__ import annotations

import threading
import time

import torch
from pydantic import SecretStr

from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.config import redact_url, scrub, secret_value
from chunkcache.store.entry_format import check, decode_buffer, encode, header_length, parse_header, read_layer
from chunkcache.store.errors import EntryUnavailable, Reason, TierWriteError
from chunkcache.store.tier import LayerSource


class RemoteTier:
    kind = "remote"
    persistent = True

    def __init__(self, url: str | SecretStr, *, key_prefix: str = "chunkcache:kv:", codec: str = "none",
                 ttl_s: int | None = None, timeout_s: float = 2.0, retry_after_s: float = 5.0) -> None:
        import redis  # optional dependency: only a store with a remote tier needs it

        secret = secret_value(url) or ""
        self._errors = (redis.exceptions.RedisError, OSError)
        self._down_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._refused = redis.exceptions.ResponseError
        self.client = redis.Redis.from_url(secret, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._secret = SecretStr(secret)
        self.url = redact_url(secret)  # the only form of the URL that appears in details and logs
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

    def _failed(self, err: BaseException) -> tuple[Reason, str]:
        """Reason and redacted detail of a client error; connection errors and timeouts open the breaker."""
        if isinstance(err, self._down_errors):
            with self._lock:
                self._down_until = time.monotonic() + self.retry_after_s
            reason = Reason.REMOTE_UNAVAILABLE
        else:
            reason = Reason.REMOTE_REFUSED if isinstance(err, self._refused) else Reason.REMOTE_ERROR
        return reason, f"{self.url}: {scrub(f'{type(err).__name__}: {err}', self._secret)}"

    def _unavailable(self, err: BaseException) -> EntryUnavailable:
        return EntryUnavailable(*self._failed(err), drop=False)

    def _fetch(self, key: str) -> bytes:
        down = self._check_up()
        if down:
            raise EntryUnavailable(Reason.REMOTE_UNAVAILABLE, down, drop=False)
        try:
            data = self.client.get(self._name(key))
        except self._errors as e:
            raise self._unavailable(e) from None
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
            raise TierWriteError(*self._failed(e)) from None
        return len(data)

    def get(self, key: str, fingerprint: str | None) -> ChunkKV:
        data = self._fetch(key)
        try:
            return decode_buffer(torch.frombuffer(bytearray(data), dtype=torch.uint8), key, fingerprint)
        except EntryUnavailable as e:
            if not e.drop or self._fetch(key) == data:
                raise  # the same bytes twice: the stored entry itself is bad
            raise EntryUnavailable(e.reason, f"{e.detail}; entry replaced since, kept", drop=False) from None

    def _range(self, name: str, offset: int, nbytes: int) -> bytes:
        """nbytes of the entry from offset (GETRANGE); a shorter answer means the entry changed or went."""
        try:
            data = self.client.getrange(name, offset, offset + nbytes - 1)
        except self._errors as e:
            raise self._unavailable(e) from None
        if len(data) != nbytes:
            raise EntryUnavailable(Reason.CORRUPT, f"entry changed or vanished while read ({len(data)} of {nbytes} "
                                                   f"bytes at {offset})", drop=False)
        return data

    def _header(self, name: str, key: str) -> tuple[bytes, int]:
        """(header prefix bytes, entry size); KeyError when absent."""
        try:
            total = self.client.strlen(name)
        except self._errors as e:
            raise self._unavailable(e) from None
        if not total:
            raise KeyError(key)
        first8 = self._range(name, 0, min(8, total))
        return self._range(name, 0, min(header_length(first8), total)), total

    def _verified(self, name: str, key: str, prefix: bytes, err: EntryUnavailable) -> EntryUnavailable:
        """err after one re-read of the header: drop=False unless the entry still has the header `prefix`."""
        if not err.drop:
            return err
        try:
            now = self._header(name, key)[0]
        except (EntryUnavailable, KeyError):
            now = b""
        if now == prefix:
            return err
        return EntryUnavailable(err.reason, f"{err.detail}; entry replaced since, kept", drop=False)

    def open_layers(self, key: str, fingerprint: str) -> LayerSource:
        down = self._check_up()
        if down:
            raise EntryUnavailable(Reason.REMOTE_UNAVAILABLE, down, drop=False)
        name = self._name(key)
        prefix, total = self._header(name, key)
        try:
            header = parse_header(prefix, total)
        except EntryUnavailable as e:
            raise self._verified(name, key, prefix, e) from None
        check(header, key, fingerprint)

        def reader(offset: int, nbytes: int) -> torch.Tensor:
            return torch.frombuffer(bytearray(self._range(name, offset, nbytes)), dtype=torch.uint8)

        def read(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                return read_layer(header, reader, i)
            except EntryUnavailable as e:
                raise self._verified(name, key, prefix, e) from None

        return LayerSource(header.key, header.fingerprint, header.token_ids, header.base_position,
                           header.n_layers, read=read)

    def delete(self, key: str) -> None:
        if self._check_up():
            return
        try:
            self.client.delete(self._name(key))
        except self._errors as e:
            self._failed(e)

    def contains(self, key: str) -> bool:
        if self._check_up():
            return False
        try:
            return bool(self.client.exists(self._name(key)))
        except self._errors as e:
            self._failed(e)
            return False

    def scan(self) -> list[tuple[str, int]]:
        return []  # shared server: this node does not index or budget it

    def close(self) -> None:
        try:
            self.client.close()
        except self._errors:
            pass
