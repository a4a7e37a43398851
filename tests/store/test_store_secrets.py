"""A password-protected Redis tier: its password is in no fault, stats entry, log line or repr, whether the
server is down, refuses the password, or refuses a command."""

from __future__ import annotations

import json
import logging

import pytest
from servers import RedisServer
from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig

PASSWORD = "s3cr3t-Redis-Pw"


def store_for(url: str) -> ChunkStore:
    kv = make_kv(0)
    return ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=kv.nbytes),
                                         TierConfig("remote", url=url, write_through=True, timeout_s=0.5,
                                                    retry_after_s=0.2)), catalog=False))


def test_password_stays_out_of_faults_stats_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(password=PASSWORD).start()
    assert PASSWORD in server.url
    shown: list[str] = []
    caplog.set_level(logging.DEBUG)
    try:
        kv, kv2 = make_kv(1), make_kv(2)
        with store_for(server.url) as store:
            assert store.put(kv) and store.put(kv2)  # kv now only in Redis (the CPU tier holds one entry)
            store.flush()
            assert same(store.tier("remote").get(kv.key, FP), kv)  # the password works
            server.stop()
            faults: list[str] = []
            assert store.get(kv.key, FP, faults=faults) is None
            assert store.get_layers(kv.key, FP, faults=faults) is None
            assert store.put(make_kv(3), faults=faults)
            store.flush()
            assert faults and all(f.startswith("remote_unavailable: ") for f in faults)
            shown += faults + [json.dumps(store.stats()), repr(store.config), str(store.tier("remote").url)]
        server.start()  # up again, but reached with a wrong password: an authentication error
        with store_for(server.url.replace(PASSWORD, PASSWORD + "-wrong")) as wrong:
            faults = []
            assert wrong.get(kv.key, FP, faults=faults) is None
            assert "AuthenticationError" in faults[0] or "auth" in faults[0].lower(), faults
            shown += faults + [json.dumps(wrong.stats())]
    finally:
        server.cleanup()
    shown += [r.getMessage() for r in caplog.records]
    assert len(shown) > 8 and any("redis://:***@127.0.0.1" in s for s in shown)
    leaked = [s for s in shown if PASSWORD in s]
    assert not leaked, leaked
