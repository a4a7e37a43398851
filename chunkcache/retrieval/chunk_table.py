"""The text behind each stored chunk key, in SQLAlchemy: a SQLite file beside the store catalog, or
the catalog's own database (PostgreSQL) when several replicas share it.

The store catalog keeps only a hash of a chunk's text; generation from a chunk id needs the text
itself (it is re-tokenized, which gives the same token ids and so the same KV key). Each row also
holds the faiss vector id and the embedding (float32 bytes), so the vector index can be rebuilt
from this table when its file is missing or stale. A one-row version counter
(`chunkcache_index_version`) is bumped in the same transaction as every change to the embedded
rows, so a replica learns with one cheap SELECT that another one changed the table.
Vector ids derive from the chunk key (60 bits of its hash): two replicas adding different chunks at
once never pick the same id, and two adding the same chunk converge on one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import hashlib

from pydantic import SecretStr
from sqlalchemy import (BigInteger, DateTime, Integer, LargeBinary, String, Text, create_engine, delete, func, select,
                        update)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from chunkcache.store.config import secret_value
from chunkcache.store.sql_schema import create_tables


class _Base(DeclarativeBase):
    pass


class ChunkTextRow(_Base):
    __tablename__ = "chunkcache_chunk_texts"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    vec_id: Mapped[int] = mapped_column(BigInteger, unique=True, index=True)
    text: Mapped[str] = mapped_column(Text)
    num_tokens: Mapped[int] = mapped_column(Integer)
    doc_id: Mapped[str | None] = mapped_column(String(512), index=True)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IndexVersionRow(_Base):
    __tablename__ = "chunkcache_index_version"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


def vec_id_of(key: str) -> int:
    """A positive int64 faiss id from the chunk key (60 bits of its SHA-1)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") >> 4


@dataclass(frozen=True)
class ChunkRecord:
    key: str
    vec_id: int
    text: str
    num_tokens: int
    doc_id: str | None
    created: datetime
    has_embedding: bool


def _record(row: ChunkTextRow) -> ChunkRecord:
    created = row.created if row.created.tzinfo else row.created.replace(tzinfo=timezone.utc)  # SQLite drops tz
    return ChunkRecord(row.key, row.vec_id, row.text, row.num_tokens, row.doc_id, created, row.embedding is not None)


class ChunkTable:
    """key -> text, doc id, vector id, embedding.

    path: a SQLite file, or None for in memory (lost at exit); url: any SQLAlchemy URL instead
    (e.g. the catalog's PostgreSQL database, shared by replicas).
    """

    def __init__(self, path: str | Path | None = None, url: str | SecretStr | None = None) -> None:
        url = secret_value(url)  # a catalog URL from the config is a SecretStr
        if url is not None:
            self.engine = create_engine(url, pool_pre_ping=make_url(url).get_backend_name() != "sqlite")
        elif path is None:
            self.engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})
        create_tables(_Base.metadata, self.engine)
        for attempt in range(3):  # replicas starting together race on the first row
            try:
                with Session(self.engine) as s, s.begin():
                    if s.get(IndexVersionRow, "index") is None:
                        s.add(IndexVersionRow(name="index", version=0))
                break
            except IntegrityError:
                if attempt == 2:
                    raise

    def version(self) -> int:
        """The index version: changes whenever an embedded row is added, changed or deleted (any replica)."""
        with Session(self.engine) as s:
            return int(s.scalar(select(IndexVersionRow.version).where(IndexVersionRow.name == "index")) or 0)

    @staticmethod
    def _bump(s: Session) -> int:
        s.execute(update(IndexVersionRow).where(IndexVersionRow.name == "index")
                  .values(version=IndexVersionRow.version + 1))
        return int(s.scalar(select(IndexVersionRow.version).where(IndexVersionRow.name == "index")))

    def add(self, key: str, text: str, num_tokens: int, doc_id: str | None = None,
            embedding: np.ndarray | None = None) -> tuple[ChunkRecord, bool]:
        """Insert a row (or refresh doc id / embedding of an existing one). Returns (record, created)."""
        rec, created, _ = self.add_versioned(key, text, num_tokens, doc_id, embedding)
        return rec, created

    def add_versioned(self, key: str, text: str, num_tokens: int, doc_id: str | None = None,
                      embedding: np.ndarray | None = None) -> tuple[ChunkRecord, bool, int | None]:
        """add(), also returning the index version this change produced (None: no embedding changed)."""
        blob = None if embedding is None else np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
        for attempt in range(2):  # a concurrent insert of the same key by another replica: then update it
            try:
                with Session(self.engine) as s, s.begin():
                    row = s.get(ChunkTextRow, key)
                    created = row is None
                    if row is None:
                        row = ChunkTextRow(key=key, vec_id=vec_id_of(key), text=text, num_tokens=num_tokens,
                                           doc_id=doc_id, embedding=blob, created=datetime.now(timezone.utc))
                        s.add(row)
                    else:
                        row.doc_id = doc_id or row.doc_id
                        row.embedding = blob if blob is not None else row.embedding
                    s.flush()
                    version = self._bump(s) if blob is not None else None
                    return _record(row), created, version
            except IntegrityError:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def get(self, key: str) -> ChunkRecord | None:
        with Session(self.engine) as s:
            row = s.get(ChunkTextRow, key)
            return None if row is None else _record(row)

    def by_vec_ids(self, vec_ids: list[int]) -> dict[int, ChunkRecord]:
        with Session(self.engine) as s:
            rows = s.scalars(select(ChunkTextRow).where(ChunkTextRow.vec_id.in_(vec_ids)))
            return {r.vec_id: _record(r) for r in rows}

    def delete(self, key: str) -> ChunkRecord | None:
        with Session(self.engine) as s, s.begin():
            row = s.get(ChunkTextRow, key)
            if row is None:
                return None
            rec = _record(row)
            s.execute(delete(ChunkTextRow).where(ChunkTextRow.key == key))
            if rec.has_embedding:
                self._bump(s)
            return rec

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(vec_ids [n] int64, vectors [n, dim] float32) of every embedded row."""
        with Session(self.engine) as s:
            rows = s.execute(select(ChunkTextRow.vec_id, ChunkTextRow.embedding)
                             .where(ChunkTextRow.embedding.is_not(None)).order_by(ChunkTextRow.vec_id)).all()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return (np.array([r[0] for r in rows], np.int64),
                np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]))

    def count(self) -> dict[str, int]:
        with Session(self.engine) as s:
            n = s.scalar(select(func.count()).select_from(ChunkTextRow)) or 0
            embedded = s.scalar(select(func.count()).select_from(ChunkTextRow)
                                .where(ChunkTextRow.embedding.is_not(None))) or 0
            docs = s.scalar(select(func.count(func.distinct(ChunkTextRow.doc_id)))) or 0
            tokens = s.scalar(select(func.sum(ChunkTextRow.num_tokens))) or 0
        return {"chunks": n, "embedded": embedded, "documents": docs, "tokens": int(tokens)}

    def close(self) -> None:
        self.engine.dispose()
