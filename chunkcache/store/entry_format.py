"""Serialized form of a ChunkKV for the disk and remote tiers: a safetensors file with checksums.

Layout (readable by `safetensors.safe_open` / `safetensors.torch.load`):
  tensors  "keys", "values" (codec "none"), or "keys.q", "keys.scale", "values.q", "values.scale"
           (codec "int8"); every tensor has the layer as dim 0, so one layer is one contiguous slice.
  metadata format, key, fingerprint, base_position, token_ids (JSON), dtype, shape (JSON, the
           decoded [n_layers, n_kv_heads, L, head_dim]), codec, checksums (JSON: tensor name ->
           xxh3-64 hex of each layer's bytes), header_checksum (xxh3-64 of every other metadata
           field and each tensor's dtype and shape).

Invariants checked on read (any failure is an `EntryUnavailable` with reason corrupt, checksum_mismatch,
key_mismatch or fingerprint_mismatch: never another exception, never partial data):
  header parses, header checksum matches, the declared dtype is a KV dtype (float32, float16,
  bfloat16) and the codec a known one, every tensor the codec needs is there with exactly the
  dtype and shape it implies (shape [n_layers, n_kv_heads, L, head_dim], L = len(token_ids); int8
  scales [n_layers, n_kv_heads, 1, head_dim] float32), offsets and file size agree, one checksum
  per layer, key and fingerprint are what the caller asked for, and every layer's bytes match their
  checksum before that layer is decoded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

import torch
import xxhash
from safetensors.torch import save as st_save

from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.codec import make_codec
from chunkcache.store.errors import EntryUnavailable, Reason

FORMAT = "chunkcache.kv/1"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I8": torch.int8, "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64}
_KV_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MAX_HEADER = 64 << 20
_MAX_TOKEN = 1 << 32  # token ids are hashed as uint32 (keys.py)


def checksum(t: torch.Tensor) -> str:
    """xxh3-64 hex of a contiguous tensor's bytes."""
    return xxhash.xxh3_64_hexdigest(t.reshape(-1).view(torch.uint8).numpy())


def _header_digest(meta: dict[str, str], layout: dict[str, tuple[str, list[int]]]) -> str:
    body = {k: v for k, v in meta.items() if k != "header_checksum"}
    return xxhash.xxh3_64_hexdigest(json.dumps([body, layout], sort_keys=True).encode())


def encode(kv: ChunkKV, codec_name: str = "none") -> bytes:
    """ChunkKV -> safetensors bytes with per-layer checksums. Tensors are read on the CPU."""
    codec = make_codec(codec_name)
    tensors: dict[str, torch.Tensor] = {}
    for kind, x in (("keys", kv.keys), ("values", kv.values)):
        for part, t in codec.encode(x.detach().cpu()).items():
            tensors[f"{kind}.{part}" if part else kind] = t
    meta = {
        "format": FORMAT, "key": kv.key, "fingerprint": kv.fingerprint,
        "base_position": str(kv.base_position), "token_ids": json.dumps(list(kv.token_ids)),
        "dtype": str(kv.keys.dtype).removeprefix("torch."), "shape": json.dumps(list(kv.keys.shape)),
        "codec": codec_name,
        "checksums": json.dumps({n: [checksum(t[i]) for i in range(t.shape[0])] for n, t in tensors.items()}),
    }
    layout = {n: (str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in tensors.items()}
    meta["header_checksum"] = _header_digest(meta, layout)
    return st_save(tensors, metadata=meta)


@dataclass(frozen=True)
class Slot:
    """One stored tensor: dtype, shape, absolute byte range in the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    def layer_span(self, layer: int) -> tuple[int, int]:
        per = (self.end - self.start) // self.shape[0]
        return self.start + layer * per, per


@dataclass(frozen=True)
class EntryHeader:
    key: str
    fingerprint: str
    base_position: int
    token_ids: tuple[int, ...]
    dtype: torch.dtype
    shape: tuple[int, int, int, int]
    codec: str
    slots: dict[str, Slot]
    checksums: dict[str, list[str]]
    total_size: int

    @property
    def n_layers(self) -> int:
        return self.shape[0]


def header_length(first8: bytes) -> int:
    """Bytes of the safetensors prefix (8-byte length + JSON header) given the first 8 bytes."""
    if len(first8) < 8:
        raise EntryUnavailable(Reason.CORRUPT, "shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(first8[:8]))
    if n > _MAX_HEADER:
        raise EntryUnavailable(Reason.CORRUPT, f"header length {n} is implausible")
    return 8 + n


def _expected_layout(codec: str, dtype: torch.dtype, shape: tuple[int, ...]) -> dict[str, tuple[torch.dtype, tuple]]:
    """Tensor name -> (dtype, shape) that an entry of this codec, KV dtype and decoded shape must hold."""
    if codec == "none":
        return {"keys": (dtype, shape), "values": (dtype, shape)}
    if codec == "int8":
        scale = (*shape[:2], 1, shape[3])
        return {f"{kind}.{part}": (t, sh) for kind in ("keys", "values")
                for part, t, sh in (("q", torch.int8, shape), ("scale", torch.float32, scale))}
    raise EntryUnavailable(Reason.CORRUPT, f"unknown codec {codec!r}")


def _parse(prefix: bytes, total_size: int) -> EntryHeader:
    raw = json.loads(bytes(prefix[8:]).decode("utf-8"))
    meta = raw.pop("__metadata__")
    if meta.get("format") != FORMAT:
        raise EntryUnavailable(Reason.CORRUPT, f"unknown format {str(meta.get('format'))[:40]!r}")
    slots, layout, data_start, end_max = {}, {}, len(prefix), 0
    for name, info in raw.items():
        sd = _DTYPES[info["dtype"]]
        sshape = tuple(int(s) for s in info["shape"])
        a, b = (int(o) for o in info["data_offsets"])
        numel = 1
        for s in sshape:
            numel *= s
        if not 0 <= a <= b or b - a != numel * sd.itemsize or not sshape or min(sshape) < 1:
            raise EntryUnavailable(Reason.CORRUPT, f"inconsistent layout of tensor {name!r}")
        slots[name] = Slot(sd, sshape, data_start + a, data_start + b)
        layout[name] = (str(sd).removeprefix("torch."), list(sshape))
        end_max = max(end_max, b)
    if data_start + end_max != total_size:
        raise EntryUnavailable(Reason.CORRUPT, f"size {total_size} != {data_start + end_max} (truncated?)")
    if meta.get("header_checksum") != _header_digest(meta, layout):
        raise EntryUnavailable(Reason.CHECKSUM_MISMATCH, "header checksum")
    # the header is what some writer wrote: from here on, check it describes a well-formed entry
    dtype = _KV_DTYPES.get(meta["dtype"])
    if dtype is None:
        raise EntryUnavailable(Reason.CORRUPT, f"dtype {str(meta['dtype'])[:40]!r} is not a KV dtype")
    shape = tuple(json.loads(meta["shape"]))
    token_ids = tuple(json.loads(meta["token_ids"]))
    if len(shape) != 4 or not all(type(n) is int and n >= 1 for n in shape):
        raise EntryUnavailable(Reason.CORRUPT, f"shape {shape} is not 4 positive sizes")
    if len(token_ids) != shape[2] or not all(type(t) is int and 0 <= t < _MAX_TOKEN for t in token_ids):
        raise EntryUnavailable(Reason.CORRUPT, f"{len(token_ids)} token ids for {shape[2]} KV rows, or not ids")
    base_position = int(meta["base_position"])
    checksums = json.loads(meta["checksums"])
    key, fingerprint, codec = meta["key"], meta["fingerprint"], meta["codec"]
    if not all(isinstance(v, str) for v in (key, fingerprint, codec)) or base_position < 0:
        raise EntryUnavailable(Reason.CORRUPT, "key, fingerprint, codec or base_position malformed")
    expected = _expected_layout(codec, dtype, shape)
    found = {n: (sl.dtype, sl.shape) for n, sl in slots.items()}
    if found != expected:
        raise EntryUnavailable(Reason.CORRUPT, f"tensors {sorted(found)} do not match codec {codec!r}, "
                                               f"dtype {meta['dtype']} and shape {list(shape)}")
    if not isinstance(checksums, dict) or set(checksums) != set(expected) or not all(
            isinstance(c, list) and len(c) == shape[0] and all(isinstance(x, str) for x in c)
            for c in checksums.values()):
        raise EntryUnavailable(Reason.CORRUPT, "checksums do not list one per layer of every tensor")
    return EntryHeader(key=key, fingerprint=fingerprint, base_position=base_position, token_ids=token_ids,
                       dtype=dtype, shape=shape, codec=codec, slots=slots,  # type: ignore[arg-type]
                       checksums=checksums, total_size=total_size)


def parse_header(prefix: bytes, total_size: int) -> EntryHeader:
    """Validate the safetensors header and our metadata. prefix: the first header_length() bytes.
    Raises only EntryUnavailable (corrupt or checksum_mismatch), whatever the bytes."""
    try:
        return _parse(prefix, total_size)
    except EntryUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed JSON or field: the entry is unusable
        raise EntryUnavailable(Reason.CORRUPT, f"unreadable header ({type(e).__name__}: {str(e)[:200]})") from None


def check(header: EntryHeader, key: str, fingerprint: str | None) -> None:
    """Refuse an entry that is not the chunk asked for."""
    if header.key != key:
        raise EntryUnavailable(Reason.KEY_MISMATCH, f"entry holds {header.key[:16]}..., asked {key[:16]}...")
    if fingerprint is not None and header.fingerprint != fingerprint:
        raise EntryUnavailable(Reason.FINGERPRINT_MISMATCH,
                               f"entry is for {header.fingerprint!r}, asked for {fingerprint!r}", drop=False)


def _as(raw: torch.Tensor, slot: Slot, shape: tuple[int, ...]) -> torch.Tensor:
    if raw.storage_offset() % slot.dtype.itemsize:
        raw = raw.clone()
    return raw.view(slot.dtype).reshape(shape)


# reader(offset, nbytes) -> uint8 tensor of exactly nbytes, the file's bytes at that offset
Reader = Callable[[int, int], torch.Tensor]


def read_layer(header: EntryHeader, reader: Reader, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Verified, decoded (k, v) of one layer, each [n_kv_heads, L, head_dim] in header.dtype."""
    codec = make_codec(header.codec)
    out = []
    for kind in ("keys", "values"):
        parts = {}
        for name, slot in header.slots.items():
            if name.split(".")[0] != kind:
                continue
            offset, nbytes = slot.layer_span(layer)
            raw = reader(offset, nbytes)
            if raw.numel() != nbytes or checksum(raw) != header.checksums[name][layer]:
                raise EntryUnavailable(Reason.CHECKSUM_MISMATCH, f"tensor {name!r} layer {layer}")
            parts[name.partition(".")[2]] = _as(raw, slot, slot.shape[1:])
        try:
            out.append(codec.decode(parts, header.dtype))
        except (ValueError, RuntimeError, TypeError) as e:  # parse_header checked the layout: not expected
            raise EntryUnavailable(Reason.CORRUPT, f"layer {layer} does not decode ({e})") from None
    return out[0], out[1]


def decode_buffer(buf: torch.Tensor, key: str, fingerprint: str | None) -> ChunkKV:
    """Whole entry from a uint8 buffer holding the full file. Zero-copy views for codec "none"."""
    header = parse_header(buf[: header_length(buf[:8].numpy().tobytes())].numpy().tobytes(), buf.numel())
    check(header, key, fingerprint)
    layers = [read_layer(header, lambda o, n: buf[o:o + n], i) for i in range(header.n_layers)]
    if header.codec == "none":
        ks, vs = header.slots["keys"], header.slots["values"]
        keys, values = _as(buf[ks.start:ks.end], ks, header.shape), _as(buf[vs.start:vs.end], vs, header.shape)
    else:
        keys = torch.stack([k for k, _ in layers])
        values = torch.stack([v for _, v in layers])
    try:
        return ChunkKV(header.key, header.fingerprint, header.token_ids, header.base_position, keys, values)
    except ValueError as e:
        raise EntryUnavailable(Reason.CORRUPT, str(e)) from None
