"""The text behind each stored chunk key, in SQLAlchemy (a SQLite file beside the store catalog).

The store catalog keeps only a hash of a chunk's text; generation from a chunk id needs the text
itself (it is re-tokenized, which gives the same token ids and so the same KV key). Each row also
holds the faiss vector id and the embedding (float32 bytes), so the vector index can be rebuilt
from this table when its file is missing or stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, String, Text, create_engine, delete, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool


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
    """key -> text, doc id, vector id, embedding. path None: in-memory (lost at exit)."""

    def __init__(self, path: str | Path | None) -> None:
        if path is None:
            self.engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})
        _Base.metadata.create_all(self.engine)

    def add(self, key: str, text: str, num_tokens: int, doc_id: str | None = None,
            embedding: np.ndarray | None = None) -> tuple[ChunkRecord, bool]:
        """Insert a row (or refresh doc id / embedding of an existing one). Returns (record, created)."""
        blob = None if embedding is None else np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
        with Session(self.engine) as s, s.begin():
            row = s.get(ChunkTextRow, key)
            created = row is None
            if row is None:
                next_id = (s.scalar(select(func.max(ChunkTextRow.vec_id))) or 0) + 1
                row = ChunkTextRow(key=key, vec_id=next_id, text=text, num_tokens=num_tokens, doc_id=doc_id,
                                   embedding=blob, created=datetime.now(timezone.utc))
                s.add(row)
            else:
                row.doc_id = doc_id or row.doc_id
                row.embedding = blob if blob is not None else row.embedding
            s.flush()
            return _record(row), created

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
