"""The OpenAI-compatible routes against a live `chunkcache serve`, with the real `openai` client and LangChain's
ChatOpenAI: values (greedy text equal to the in-process engine), usage and cached_tokens, streaming, stop,
max_tokens, seeds, chunk marks (documents, content parts, LMCache's separator) and OpenAI's error shapes."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from api_helpers import API_KEY, MAX_NEW_TOKENS

MODEL = "SmolLM2-135M-Instruct"
SYSTEM = {"role": "system", "content": "You are a terse geography assistant."}


@pytest.fixture(scope="module")
def oa(live_server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_model(smollm):  # type: ignore[no-untyped-def]
    """The in-process reference: ChunkCacheChatModel in full prefill over the same model."""
    import torch

    from chunkcache.agents.langchain_chat import ChunkCacheChatModel
    from chunkcache.agents.runtime import AgentRuntime
    from chunkcache.runner.runner import ModelRunner

    torch.set_num_threads(1)
    rt = AgentRuntime(ModelRunner(smollm.model, smollm.tokenizer))
    yield ChunkCacheChatModel(runtime=rt, mode="full", max_tokens=6)
    rt.close()


def _fresh(text: str) -> str:
    """Text no earlier test sent (the server's store is shared by the session)."""
    return f"{text} (ref {uuid.uuid4().hex[:8]})"


def test_models_lists_the_served_model(oa) -> None:  # type: ignore[no-untyped-def]
    assert [m.id for m in oa.models.list().data] == [MODEL]


def test_chat_greedy_equals_the_engine_in_process(oa, chat_model) -> None:  # type: ignore[no-untyped-def]
    from langchain_core.messages import HumanMessage, SystemMessage

    question = "What is the capital of France?"
    r = oa.chat.completions.create(model=MODEL, messages=[SYSTEM, {"role": "user", "content": question}],
                                   temperature=0, max_tokens=6)
    ref = chat_model.invoke([SystemMessage(SYSTEM["content"]), HumanMessage(question)])
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.content and ref.content.strip()
    assert r.usage.prompt_tokens == ref.usage_metadata["input_tokens"]
    assert r.usage.completion_tokens == ref.usage_metadata["output_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model_extra["chunkcache"]["mode"] == "prefix"  # no chunk marked: exact prefix reuse
    again = oa.chat.completions.create(model=MODEL, messages=[SYSTEM, {"role": "user", "content": question}],
                                       temperature=0, max_tokens=6)
    assert again.choices[0].message.content == ref.content
    assert again.usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens - 1  # all but the last token


def test_chat_stream_matches_and_reports_usage(oa) -> None:  # type: ignore[no-untyped-def]
    msgs = [SYSTEM, {"role": "user", "content": "Name a long river in Africa."}]
    whole = oa.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_completion_tokens=5)
    chunks = list(oa.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_completion_tokens=5,
                                             stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert finish[0].model_extra["chunkcache"]["generated_tokens"] == 5


def test_documents_are_chunks_reused_across_requests(oa) -> None:  # type: ignore[no-untyped-def]
    docs = [_fresh("The Loire is the longest river in France."), _fresh("Lyon lies where the Rhone meets the Saone.")]
    first = oa.chat.completions.create(model=MODEL, temperature=0, max_tokens=4, extra_body={"documents": docs},
                                       messages=[{"role": "user", "content": "Which river is the longest?"}])
    second = oa.chat.completions.create(model=MODEL, temperature=0, max_tokens=4, extra_body={"documents": docs},
                                        messages=[{"role": "user", "content": "Where does the Rhone meet the Saone?"}])
    s1, s2 = first.model_extra["chunkcache"], second.model_extra["chunkcache"]
    assert s1["mode"] == s2["mode"] == "blend" and s2["chunk_hits"] >= 2
    doc_tokens = s2["context_tokens"] - 8  # the two documents and more: well over a few tokens
    assert second.usage.prompt_tokens_details.cached_tokens >= min(doc_tokens, 20)
    assert second.usage.prompt_tokens_details.cached_tokens == s2["reused_tokens"]
    fixed = oa.chat.completions.create(model=MODEL, temperature=0, max_tokens=4,
                                       extra_body={"documents": docs, "decode_correction": 64},
                                       messages=[{"role": "user", "content": "Where does the Rhone meet the Saone?"}])
    s3 = fixed.model_extra["chunkcache"]
    assert s2["decode_pending"] == 0 and 0 < s3["decode_pending"] < fixed.usage.prompt_tokens
    stepped = oa.chat.completions.create(model=MODEL, temperature=0, max_tokens=4,
                                         extra_body={"documents": docs, "decode_correction_steps": 2},
                                         messages=[{"role": "user", "content": "Where does the Rhone meet the Saone?"}])
    assert stepped.model_extra["chunkcache"]["decode_pending"] == s3["decode_pending"]


def test_content_parts_and_separator_mark_the_same_chunks(oa) -> None:  # type: ignore[no-untyped-def]
    a, b = _fresh("Vienna is on the Danube."), _fresh("Budapest is on the Danube too.")
    parts = [{"type": "text", "text": a}, {"type": "text", "text": b}, {"type": "text", "text": "Name one city."}]
    first = oa.chat.completions.create(model=MODEL, temperature=0, max_tokens=3,
                                       messages=[{"role": "user", "content": parts}])
    sep = oa.chat.completions.create(model=MODEL, temperature=0, max_tokens=3,
                                     messages=[{"role": "user", "content": f"{a} # # {b} # # Name a river."}])
    assert first.model_extra["chunkcache"]["chunk_misses"] >= 3
    assert sep.model_extra["chunkcache"]["chunk_hits"] >= 2  # a and b, marked by parts then by the separator


def test_completions_greedy_stream_stop_and_max_tokens(oa, smollm) -> None:  # type: ignore[no-untyped-def]
    import torch

    prompt = "The capital of France is"
    r = oa.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6)
    ids = smollm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = smollm.model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    assert r.object == "text_completion" and r.choices[0].text == smollm.tokenizer.decode(ref)
    assert r.usage.prompt_tokens == ids.shape[1] and r.usage.completion_tokens == 6
    assert r.choices[0].finish_reason == "length"
    streamed = list(oa.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"
    word = r.choices[0].text.split()[1]
    stopped = oa.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, stop=[word, "zzz"])
    assert stopped.choices[0].text == r.choices[0].text[:r.choices[0].text.index(word)]
    assert stopped.choices[0].finish_reason == "stop"
    docs = oa.completions.create(model=MODEL, prompt=f"{_fresh('Rome is in Italy.')} # # Rome is in", max_tokens=2,
                                 temperature=0)
    assert docs.model_extra["chunkcache"]["mode"] == "blend" and docs.model_extra["chunkcache"]["chunk_misses"] >= 1


def test_seed_makes_sampling_repeatable(oa) -> None:  # type: ignore[no-untyped-def]
    kw = {"model": MODEL, "prompt": "Once upon a time", "temperature": 1.0, "max_tokens": MAX_NEW_TOKENS}
    runs = [oa.completions.create(seed=s, **kw).choices[0].text for s in (7, 7, 8, 9)]
    assert runs[0] == runs[1] and len(set(runs)) > 1


def test_errors_have_openai_shape(oa, live_server) -> None:  # type: ignore[no-untyped-def]
    msgs = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model=MODEL, messages=msgs, n=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "n" and "n=1" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError) as e:
        oa.chat.completions.create(model="gpt-4o", messages=msgs)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model=MODEL, prompt="Hi there", temperature=7)
    assert e.value.body["param"] == "temperature" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model=MODEL, messages=msgs, extra_body={"frobnicate": 1})
    assert e.value.body["param"] == "frobnicate"
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model=MODEL, messages=msgs,
                                   extra_body={"decode_correction": 8, "decode_correction_steps": 2})
    assert e.value.body["param"] == "decode_correction_steps" and "one, not both" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model=MODEL, messages=msgs, max_tokens=MAX_NEW_TOKENS + 1)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert e.value.body["code"] == "invalid_api_key"
    raw = httpx.post(f"{live_server.url}/v1/chat/completions", json={"model": MODEL, "messages": []},
                     headers={"Authorization": f"Bearer {API_KEY}"})
    assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert raw.json()["error"]["param"] == "messages"
    raw = httpx.post(f"{live_server.url}/v1/completions", json={"model": MODEL, "prompt": ["one", "two"]},
                     headers={"Authorization": f"Bearer {API_KEY}"})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "prompt"  # no union-member tags in it


def test_langchain_chat_openai_invoke_and_stream(oa, live_server) -> None:  # type: ignore[no-untyped-def]
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{live_server.url}/v1", api_key=API_KEY, model=MODEL, temperature=0, max_tokens=5,
                     max_retries=0, stream_usage=True)
    msgs = [("system", SYSTEM["content"]), ("human", "Name a mountain in Japan.")]
    out = llm.invoke(msgs)
    ref = oa.chat.completions.create(model=MODEL, temperature=0, max_tokens=5,
                                     messages=[SYSTEM, {"role": "user", "content": "Name a mountain in Japan."}])
    assert out.content == ref.choices[0].message.content and out.content.strip()
    assert out.usage_metadata["output_tokens"] == ref.usage.completion_tokens
    assert out.usage_metadata["input_token_details"]["cache_read"] > 0  # the earlier request's prefix
    pieces = list(llm.stream(msgs))
    assert "".join(p.content for p in pieces) == out.content
    assert sum(p.usage_metadata["output_tokens"] for p in pieces if p.usage_metadata) == ref.usage.completion_tokens
