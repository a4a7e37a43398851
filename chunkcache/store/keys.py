"""Content hashes for chunk identity. Free of torch on purpose: the catalog and eviction use it too."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

HASH_VERSION = "v1"


def token_digest(token_ids: Sequence[int]) -> str:
    """sha256 hex of a token id sequence (little-endian uint32 each)."""
    h = hashlib.sha256()
    h.update(struct.pack(f"<{len(token_ids)}I", *token_ids))
    return h.hexdigest()


def chunk_key(fingerprint: str, context_ids: Sequence[int], token_ids: Sequence[int]) -> str:
    """Identity of a chunk's KV: the model, the precompute context it was computed behind, its tokens.

    The same text computed behind another context, or by another model or tokenizer, is another key.
    """
    if not fingerprint:
        raise ValueError("fingerprint must be a non-empty string")
    h = hashlib.sha256()
    for part in (HASH_VERSION, fingerprint, token_digest(context_ids), token_digest(token_ids)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def anchor_key(entry_key: str, sink_ids: Sequence[int], ratio: float, sinks: int) -> str:
    """Identity of qcfuse's anchors of one placed entry (blend/anchor_memo.py): the entry's `chunk_key` (model,
    precompute context, chunk tokens), the sink tokens ahead of the chunk, and the anchor parameters. sha256 hex."""
    h = hashlib.sha256()
    for part in ("anchors/v1", entry_key, token_digest(sink_ids), repr(float(ratio)), str(int(sinks))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()
