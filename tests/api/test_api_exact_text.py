"""REST and SSE text is exactly tokenizer.decode(token_ids): CJK, accents and emoji survive."""

from __future__ import annotations

import pytest
from api_helpers import MAX_NEW_TOKENS, sse_events

CJK = {"chunks": ["北京是中国的首都。上海是中国最大的城市。"], "query": "请用中文回答：上海是什么？",
       "max_tokens": MAX_NEW_TOKENS, "mode": "full", "return_token_ids": True}


@pytest.mark.slow
def test_api_text_and_sse_equal_the_decode(client, smollm_tokenizer) -> None:
    r = client.post("/generate_with_chunks", json=CJK)
    assert r.status_code == 200, r.text
    out = r.json()
    ids = out["token_ids"]
    assert 1 <= len(ids) == out["stats"]["generated_tokens"]
    exact = smollm_tokenizer.decode(ids, skip_special_tokens=True)
    assert out["text"] == exact and "\ufffd" not in exact and any(ord(c) > 0x2E80 for c in exact), exact
    with client.stream("POST", "/generate_with_chunks", json={**CJK, "stream": True}) as s:
        events = sse_events(s)
    tokens = [d for e, d in events if e == "token"]
    done = [d for e, d in events if e == "done"][0]
    assert "".join(d["text"] for d in tokens) == done["text"] == exact
    assert done["token_ids"] == ids == [d["token"] for d in tokens if d["token"] is not None]
    plain = client.post("/generate_with_chunks", json={**CJK, "return_token_ids": False}).json()
    assert plain["text"] == exact and plain.get("token_ids") is None


@pytest.mark.slow
def test_api_answer_cut_inside_a_character_drops_it(client, smollm_tokenizer) -> None:
    """Issue 19 item 13: a CJK answer cut by max_tokens mid-character ends before it, streamed and not."""
    ids = client.post("/generate_with_chunks", json=CJK).json()["token_ids"]
    cuts = [k for k in range(1, len(ids) + 1) if smollm_tokenizer.decode(ids[:k]).endswith("\ufffd")]
    assert cuts, smollm_tokenizer.decode(ids)
    body = {**CJK, "max_tokens": cuts[-1]}
    out = client.post("/generate_with_chunks", json=body).json()
    assert out["token_ids"] == ids[:cuts[-1]]
    expected = smollm_tokenizer.decode(out["token_ids"])[:-1]
    assert out["text"] == expected and expected and "\ufffd" not in expected
    with client.stream("POST", "/generate_with_chunks", json={**body, "stream": True}) as s:
        events = sse_events(s)
    done = [d for e, d in events if e == "done"][0]
    assert "".join(d["text"] for e, d in events if e == "token") == done["text"] == expected
    assert done["token_ids"] == out["token_ids"]
