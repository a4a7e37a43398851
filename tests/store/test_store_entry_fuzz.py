"""Fuzz of the entry parser (hypothesis): random bytes, byte-level damage of a valid entry, and header
fields replaced by arbitrary JSON under a valid header checksum. decode_buffer, the whole read path of
the disk and remote tiers (header, layout, every layer, ChunkKV), may only raise EntryUnavailable; when
it returns, the entry is exactly what its header declares."""

from __future__ import annotations

import json

import torch
from entry_mutation import rewrite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_kvgen import make_kv

from chunkcache.store.entry_format import _KV_DTYPES, decode_buffer, encode
from chunkcache.store.errors import EntryUnavailable

KV = make_kv(7, 6, n_layers=2, n_kv=2, head_dim=4)
VALID = {codec: encode(KV, codec) for codec in ("none", "int8")}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
META_FIELDS = ["format", "key", "fingerprint", "base_position", "token_ids", "dtype", "shape", "codec", "checksums"]
TENSOR_FIELDS = ["dtype", "shape", "data_offsets"]


def decode(blob: bytes, key: str | None = None) -> None:
    buf = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)
    try:
        kv = decode_buffer(buf, key or KV.key, None)
    except EntryUnavailable as e:
        assert e.reason.value in ("corrupt", "checksum_mismatch", "key_mismatch"), e
        return
    meta = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    assert list(kv.keys.shape) == json.loads(meta["shape"]) == list(kv.values.shape)
    assert kv.keys.dtype == _KV_DTYPES[meta["dtype"]] and len(kv.token_ids) == kv.keys.shape[2]


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(blob: bytes) -> None:
    decode(blob)


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 400))
def test_random_header_behind_a_plausible_length(body: bytes, n: int) -> None:
    decode(n.to_bytes(8, "little") + body)


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data())
def test_damaged_valid_entry(codec: str, data: st.DataObject) -> None:
    blob = bytearray(VALID[codec])
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(blob)))
    decode(bytes(blob[:cut] if data.draw(st.booleans()) else blob))


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.sampled_from(META_FIELDS), JSON, st.booleans())
def test_meta_field_replaced_under_a_valid_checksum(codec: str, field: str, value: object, as_json: bool) -> None:
    text = json.dumps(value) if as_json or not isinstance(value, str) else value

    def edit(tensors: dict, meta: dict) -> None:
        meta[field] = text

    decode(rewrite(VALID[codec], edit))


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data(), JSON)
def test_tensor_field_replaced_under_a_valid_checksum(codec: str, data: st.DataObject, value: object) -> None:
    names = sorted(json.loads(VALID[codec][8:8 + int.from_bytes(VALID[codec][:8], "little")]))
    name = data.draw(st.sampled_from([n for n in names if n != "__metadata__"]))
    field = data.draw(st.sampled_from(TENSOR_FIELDS))
    small = st.lists(st.integers(-3, 200), max_size=5) | st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "I64"])
    new = data.draw(small | st.just(value))

    def edit(tensors: dict, meta: dict) -> None:
        tensors[name][field] = new

    decode(rewrite(VALID[codec], edit))


def test_the_fuzz_reaches_a_valid_decode() -> None:
    """The unmutated entries decode: the harness does not reject everything."""
    for blob in VALID.values():
        decode(blob)
