"""Catalog of stored chunks in SQLAlchemy 2.x: a SQLite file by default, PostgreSQL by URL. Torch-free.

One row per chunk key: model fingerprint, token count, dtype, shape, bytes, which persistent tiers
hold it (on_disk, on_remote: node-independent facts; memory tiers are per process and reported by
ChunkStore.stats()), source document id, the chunk text's hash, recompute cost, created, last used,
hits. Beside it, `chunkcache_anchors`: qcfuse's anchor indices per placed entry (blend/anchor_memo.py), as
bytes, so a restarted process or another replica reads them instead of computing them; a chunk's rows go
with it on delete. Writes are upserts (INSERT .. ON CONFLICT) so concurrent writers of one key from threads,
processes or nodes never fail. Hits and last-use times are buffered and flushed every
`flush_every` touches (and on flush()/close()) to keep SQL off the hot read path.
SQLite runs in WAL mode with synchronous=NORMAL and a busy timeout (crash safe, many readers).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import (BigInteger, DateTime, Float, LargeBinary, String, create_engine, delete, func, select,
                        update)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from chunkcache.store.config import redact_url, secret_value
from chunkcache.store.sql_schema import create_tables, use_sqlite_pragmas


class _Base(DeclarativeBase):
    pass


class ChunkRow(_Base):
    __tablename__ = "chunkcache_chunks"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(256), index=True)
    num_tokens: Mapped[int]
    dtype: Mapped[str] = mapped_column(String(32))
    shape: Mapped[str] = mapped_column(String(128))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    on_disk: Mapped[bool] = mapped_column(default=False)
    on_remote: Mapped[bool] = mapped_column(default=False)
    source_doc_id: Mapped[str | None] = mapped_column(String(512))
    text_hash: Mapped[str | None] = mapped_column(String(128))
    recompute_cost: Mapped[float] = mapped_column(Float)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    hits: Mapped[int] = mapped_column(BigInteger, default=0)


class AnchorRow(_Base):
    """One entry's anchors: int32 [layers, count], row-major, under blend/anchor_memo's key."""

    __tablename__ = "chunkcache_anchors"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    chunk_key: Mapped[str | None] = mapped_column(String(128), index=True)  # the entry's; deleted with it
    layers: Mapped[int]
    count: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ChunkMeta:
    """What the catalog knows about one chunk. shape: [n_layers, n_kv_heads, L, head_dim]."""

    key: str
    fingerprint: str
    num_tokens: int
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    recompute_cost: float
    source_doc_id: str | None = None
    text_hash: str | None = None
    on_disk: bool = False
    on_remote: bool = False
    created: datetime = field(default_factory=_now)
    last_used: datetime = field(default_factory=_now)
    hits: int = 0

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(t for t, on in (("disk", self.on_disk), ("remote", self.on_remote)) if on)


_FIELDS = ("fingerprint", "num_tokens", "dtype", "nbytes", "source_doc_id", "text_hash", "recompute_cost")
_KEEP = ("source_doc_id", "text_hash")  # a refresh without them keeps the recorded ones


class Catalog:
    def __init__(self, url: str | SecretStr, flush_every: int = 256) -> None:
        url = secret_value(url) or ""
        u = make_url(url)
        self.is_sqlite = u.get_backend_name() == "sqlite"
        if self.is_sqlite and u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            use_sqlite_pragmas(self.engine, synchronous="NORMAL")
        self.url = redact_url(url)  # printable; the engine holds the real one
        self.flush_every = flush_every
        self._pending: Counter[str] = Counter()
        self._lock = threading.Lock()
        create_tables(_Base.metadata, self.engine)

    def _insert(self):  # type: ignore[no-untyped-def]
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            raise NotImplementedError(f"catalog supports sqlite and postgresql, not {dialect}")
        return insert

    def upsert(self, meta: ChunkMeta) -> None:
        """Insert or refresh a row; tier flags are OR-ed with those already recorded."""
        values = {f: getattr(meta, f) for f in _FIELDS}
        values.update(key=meta.key, shape=json.dumps(list(meta.shape)), on_disk=meta.on_disk,
                      on_remote=meta.on_remote, created=meta.created, last_used=meta.last_used, hits=meta.hits)
        stmt = self._insert()(ChunkRow).values(**values)
        t = ChunkRow.__table__.c
        stmt = stmt.on_conflict_do_update(index_elements=[t.key], set_={
            **{f: stmt.excluded[f] for f in (*_FIELDS, "shape", "last_used") if f not in _KEEP},
            **{f: func.coalesce(stmt.excluded[f], t[f]) for f in _KEEP},
            "on_disk": t.on_disk | stmt.excluded.on_disk, "on_remote": t.on_remote | stmt.excluded.on_remote})
        with Session(self.engine) as s, s.begin():
            s.execute(stmt)

    def set_tier(self, key: str, tier: str, present: bool) -> None:
        if tier not in ("disk", "remote"):
            raise ValueError(f"the catalog records the disk and remote tiers, not {tier!r}")
        col = "on_disk" if tier == "disk" else "on_remote"
        with Session(self.engine) as s, s.begin():
            s.execute(update(ChunkRow).where(ChunkRow.key == key).values({col: present}))

    def get(self, key: str) -> ChunkMeta | None:
        with Session(self.engine) as s:
            row = s.get(ChunkRow, key)
            if row is None:
                return None
            return ChunkMeta(row.key, row.fingerprint, row.num_tokens, row.dtype, tuple(json.loads(row.shape)),
                             row.nbytes, row.recompute_cost, row.source_doc_id, row.text_hash, row.on_disk,
                             row.on_remote, row.created, row.last_used, row.hits + self._pending.get(key, 0))

    def touch(self, key: str) -> None:
        """Count a hit (buffered)."""
        with self._lock:
            self._pending[key] += 1
            due = sum(self._pending.values()) >= self.flush_every
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, Counter()
        if not pending:
            return
        now = _now()
        with Session(self.engine) as s, s.begin():
            for key, n in sorted(pending.items()):
                s.execute(update(ChunkRow).where(ChunkRow.key == key)
                          .values(hits=ChunkRow.hits + n, last_used=now))

    def delete(self, key: str) -> None:
        with self._lock:
            self._pending.pop(key, None)
        with Session(self.engine) as s, s.begin():
            s.execute(delete(ChunkRow).where(ChunkRow.key == key))
            s.execute(delete(AnchorRow).where(AnchorRow.chunk_key == key))

    def put_anchors(self, key: str, chunk_key: str | None, layers: int, count: int, data: bytes) -> None:
        """Insert or replace the anchors under key (data: int32 [layers, count], row-major); chunk_key: the
        store entry they were computed from (None: not a stored entry), whose delete removes them."""
        if len(data) != 4 * layers * count:
            raise ValueError(f"anchors: {len(data)} bytes for int32 [{layers}, {count}]")
        values = {"key": key, "chunk_key": chunk_key, "layers": layers, "count": count, "data": data}
        stmt = self._insert()(AnchorRow).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=[AnchorRow.__table__.c.key],
                                          set_={f: stmt.excluded[f] for f in ("layers", "count", "data")})
        with Session(self.engine) as s, s.begin():
            s.execute(stmt)

    def get_anchors(self, key: str) -> tuple[int, int, bytes] | None:
        """(layers, count, data) stored under key, or None."""
        with Session(self.engine) as s:
            row = s.get(AnchorRow, key)
            return None if row is None else (row.layers, row.count, bytes(row.data))

    def keys(self, fingerprint: str | None = None) -> list[str]:
        q = select(ChunkRow.key).order_by(ChunkRow.key)
        if fingerprint is not None:
            q = q.where(ChunkRow.fingerprint == fingerprint)
        with Session(self.engine) as s:
            return list(s.scalars(q))

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.engine.dispose()
