"""Why a stored chunk could not be served. Torch-free.

Every fault a tier detects is an `EntryUnavailable` carrying one of the `Reason` codes below. The
store turns it into a miss (the caller recomputes the chunk) and records the reason in `stats()`;
it never returns KV it could not verify.
"""

from __future__ import annotations

from enum import Enum


def brief_error(e: BaseException) -> str:
    """An error's type and first line, at most 200 characters: what a fault record or log line keeps of a
    database error (SQLAlchemy appends the statement and its parameters, e.g. KV or anchor bytes)."""
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


class Reason(str, Enum):
    """Fault codes recorded in `ChunkStore.stats()["fallbacks"]` and `["put_failures"]`."""

    FINGERPRINT_MISMATCH = "fingerprint_mismatch"  # entry was computed by another model / context
    KEY_MISMATCH = "key_mismatch"  # the file or blob holds another chunk than its name says
    CHECKSUM_MISMATCH = "checksum_mismatch"  # a tensor's bytes or the header were altered
    CORRUPT = "corrupt"  # unparseable header, truncated file, inconsistent layout
    FILE_MISSING = "file_missing"  # catalog row says "on disk", no file there
    CATALOG_ROW_MISSING = "catalog_row_missing"  # file present, catalog has no row for it
    REMOTE_UNAVAILABLE = "remote_unavailable"  # Redis unreachable / timed out (opens the tier's breaker)
    REMOTE_REFUSED = "remote_refused"  # Redis answered with an error (OOM under noeviction, WRONGTYPE, READONLY)
    REMOTE_ERROR = "remote_error"  # any other Redis client error (bad reply, data error)
    CATALOG_UNAVAILABLE = "catalog_unavailable"  # the catalog database refused or did not answer
    WRITE_QUEUE_FULL = "write_queue_full"  # background writer full: the slow-tier write was dropped
    DISK_FULL = "disk_full"  # ENOSPC / EDQUOT while writing
    IO_ERROR = "io_error"  # any other OSError
    TOO_LARGE = "too_large"  # entry exceeds every tier's budget
    STREAM_ABORTED = "stream_aborted"  # get_layers failed after yielding some layers


class StoreError(Exception):
    """Base class of the store's own exceptions."""


class EntryUnavailable(StoreError):
    """A tier holds something for the key but it must not be served.

    `drop` says whether the tier should forget the entry (it is known bad) rather than keep it
    (a transient fault such as an unreachable server).
    """

    def __init__(self, reason: Reason, detail: str = "", *, drop: bool = True) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.drop = drop


class TierWriteError(StoreError):
    """A tier could not store an entry (disk full, server down). Nothing partial was left behind."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
