"""SQL catalog of persisted anchors: a SQLite file in the pool's directory (SQLAlchemy). Torch-free.

chunkcache_anchors: one row per anchor (placeholder sample): id, model fingerprint, placeholder name,
    token ids (JSON), creation sequence, use count.
chunkcache_anchor_offsets: one row per (anchor, reader_key) whose offsets are stored.
Tensor files are written before their rows, so a crash leaves at most an orphan file, never a row
without a file; a row whose file is gone or corrupt is dropped when read (dense fallback).
The file is the pool's own: these table names are not namespaced apart from the chunk catalog's
(store/catalog.py also has a `chunkcache_anchors`), so the two never share a database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import BigInteger, String, Text, create_engine, delete, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from chunkcache.store.sql_schema import create_tables, use_sqlite_pragmas


class _Base(DeclarativeBase):
    pass


class AnchorRow(_Base):
    __tablename__ = "chunkcache_anchors"

    anchor_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(256), index=True)
    placeholder: Mapped[str] = mapped_column(String(256), index=True)
    token_ids: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(BigInteger)
    uses: Mapped[int] = mapped_column(BigInteger, default=0)


class OffsetRow(_Base):
    __tablename__ = "chunkcache_anchor_offsets"

    anchor_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reader_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    follow_tokens: Mapped[int]
    context_digest: Mapped[str] = mapped_column(String(64), default="")


@dataclass(frozen=True)
class AnchorRecord:
    anchor_id: str
    fingerprint: str
    placeholder: str
    token_ids: tuple[int, ...]
    seq: int
    uses: int
    readers: dict[str, tuple[int, str]]  # reader_key -> (following-text token count, context digest)


class AnchorCatalog:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}")
        use_sqlite_pragmas(self.engine)
        create_tables(_Base.metadata, self.engine)

    def fingerprints(self) -> set[str]:
        with Session(self.engine) as s:
            return set(s.scalars(select(AnchorRow.fingerprint).distinct()))

    def records(self, fingerprint: str) -> list[AnchorRecord]:
        with Session(self.engine) as s:
            rows = s.scalars(select(AnchorRow).where(AnchorRow.fingerprint == fingerprint).order_by(AnchorRow.seq))
            out = []
            for row in rows:
                readers = {o.reader_key: (o.follow_tokens, o.context_digest)
                           for o in s.scalars(select(OffsetRow).where(OffsetRow.anchor_id == row.anchor_id))}
                out.append(AnchorRecord(row.anchor_id, row.fingerprint, row.placeholder,
                                        tuple(json.loads(row.token_ids)), row.seq, row.uses, readers))
            return out

    def add_anchor(self, anchor_id: str, fingerprint: str, placeholder: str, token_ids: tuple[int, ...],
                   seq: int) -> None:
        with Session(self.engine) as s, s.begin():
            if s.get(AnchorRow, anchor_id) is None:
                s.add(AnchorRow(anchor_id=anchor_id, fingerprint=fingerprint, placeholder=placeholder,
                                token_ids=json.dumps(list(token_ids)), seq=seq, uses=0))

    def add_offset(self, anchor_id: str, reader_key: str, follow_tokens: int, context_digest: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(OffsetRow, (anchor_id, reader_key))
            if row is None:
                s.add(OffsetRow(anchor_id=anchor_id, reader_key=reader_key, follow_tokens=follow_tokens,
                                context_digest=context_digest))
            else:
                row.follow_tokens, row.context_digest = follow_tokens, context_digest

    def set_uses(self, anchor_id: str, uses: int) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(update(AnchorRow).where(AnchorRow.anchor_id == anchor_id).values(uses=uses))

    def delete(self, anchor_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(delete(OffsetRow).where(OffsetRow.anchor_id == anchor_id))
            s.execute(delete(AnchorRow).where(AnchorRow.anchor_id == anchor_id))

    def close(self) -> None:
        self.engine.dispose()
