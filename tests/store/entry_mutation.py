"""Rewrite a stored entry's safetensors header as a writer could have, with a valid header checksum.

Tests of malformed entries need headers that pass the checksum, so that the checks behind it are reached.
`rewrite(blob, edit)` parses blob's JSON header, lets `edit(tensors, meta)` change it in place (tensors:
name -> {"dtype", "shape", "data_offsets"}; meta: the string metadata), recomputes header_checksum when the
edited layout still names known safetensors dtypes, and returns length + header + the original data bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

from chunkcache.store import entry_format

Edit = Callable[[dict, dict], None]


def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def rewrite(blob: bytes, edit: Edit) -> bytes:
    header, data = split(blob)
    meta = header.pop("__metadata__")
    edit(header, meta)
    try:
        layout = {n: (str(entry_format._DTYPES[i["dtype"]]).removeprefix("torch."), list(i["shape"]))
                  for n, i in header.items()}
        meta["header_checksum"] = entry_format._header_digest(meta, layout)
    except (KeyError, TypeError):
        pass  # a layout the reader cannot even name: the checksum stays stale
    text = json.dumps({"__metadata__": meta, **header}).encode()
    return struct.pack("<Q", len(text)) + text + data


def set_meta(field: str, value: str) -> Edit:
    return lambda tensors, meta: meta.__setitem__(field, value)
