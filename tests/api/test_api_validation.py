"""Malformed input answers 4xx with a message naming the field (real server over HTTP)."""

from __future__ import annotations

import json

import httpx
import pytest
from api_helpers import MAX_BODY_BYTES, MAX_NEW_TOKENS, body

CASES = [  # (request body, field named)
    ({"chunks": ["a"]}, "query"),
    (body(query=123), "query"),
    (body(query=""), "query"),
    (body(query="   \n"), "query"),
    (body(query="\ud800 lone surrogate"), "query"),
    (body(chunks=[]), "chunks"),
    (body(chunks="Paris"), "chunks"),
    (body(chunks=["ok", "  "]), "chunks.1"),
    (body(chunks=[{"id": "ab", "text": "both"}]), "chunks.0"),
    (body(chunks=[{"id": "not-hex!"}]), "chunks.0"),
    (body(chunks=[17]), "chunks.0"),
    (body(mode="bogus"), "mode"),
    (body(recompute_ratio=1.5), "recompute_ratio"),
    (body(recompute_ratio=-0.1), "recompute_ratio"),
    (body(recompute_ratio="0.2"), "recompute_ratio"),
    (body(decode_correction=-1), "decode_correction"),
    (body(decode_correction="8"), "decode_correction"),
    (body(decode_correction=5000), "decode_correction"),
    (body(decode_correction_steps=-1), "decode_correction_steps"),
    (body(decode_correction=8, decode_correction_steps=2), "decode_correction_steps"),  # one, not both
    (body(calibrated="yes"), "calibrated"),
    (body(calibrated=True), "calibrated"),  # the served model was never calibrated
    (body(max_tokens=0), "max_tokens"),
    (body(max_tokens="5"), "max_tokens"),
    (body(max_tokens=MAX_NEW_TOKENS + 1), "max_tokens"),
    (body(temperature=-1), "temperature"),
    (body(top_p=0), "top_p"),
    (body(seed=-3), "seed"),
    (body(stream="yes"), "stream"),
    (body(system=""), "system"),
    (body(surprise=1), "surprise"),
    (body(chunks=["word " * 1500]), "chunks"),  # prompt over the server's --max-prompt-tokens
]


@pytest.mark.parametrize(("payload", "field"), CASES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(CASES)])
def test_api_generate_rejects_malformed_input(client, payload: dict, field: str) -> None:
    r = client.post("/generate_with_chunks", content=json.dumps(payload),  # ASCII escapes keep lone surrogates
                    headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    err = r.json()
    assert field in err["detail"] and str(err["field"]).replace("[", ".").replace("]", "").startswith(
        field.split(".")[0]), err


def test_api_unknown_chunk_id_is_404(client) -> None:
    r = client.post("/generate_with_chunks", json=body(chunks=["text", {"id": "0" * 64}]))
    assert r.status_code == 404 and r.json()["field"] == "chunks[1].id" and "0" * 64 in r.json()["detail"]
    assert client.get(f"/chunks/{'f' * 64}").status_code == 404
    assert client.delete(f"/chunks/{'f' * 64}").status_code == 404


def test_api_body_limits(client, live_server) -> None:
    huge = body(query="x" * (MAX_BODY_BYTES + 10))
    r = client.post("/generate_with_chunks", json=huge)
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunked():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"chunks": ["a"], "query": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"y" * 1024
        yield b'"}'

    r = client.post("/generate_with_chunks", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]
    r = client.post("/generate_with_chunks", content=b'{"chunks": [', headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/generate_with_chunks", content=b"chunks=a", headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500
    assert httpx.get(f"{live_server.url}/healthz").status_code == 200


@pytest.mark.parametrize(("path", "payload", "field"), [
    ("/chunks", {"chunks": []}, "chunks"),
    ("/chunks", {"chunks": ["ok"], "index": "yes"}, "index"),
    ("/chunks", {"chunks": ["ok"], "doc_id": ""}, "doc_id"),
    ("/documents", {"documents": []}, "documents"),
    ("/documents", {"documents": [{"text": " "}]}, "documents.0.text"),
    ("/documents", {"documents": [{"text": "a"}], "chunk_tokens": 8}, "chunk_tokens"),
    ("/documents", {"documents": [{"text": "a"}], "chunk_tokens": 64, "overlap_tokens": 40}, "overlap_tokens"),
    ("/rag/answer", {"query": "q", "k": 0}, "k"),
    ("/rag/answer", {"k": 2}, "query"),
])
def test_api_other_endpoints_reject_malformed_input(client, path: str, payload: dict, field: str) -> None:
    r = client.post(path, json=payload)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
