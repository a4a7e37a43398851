"""Chunk marks of the OpenAI routes (api/openai_layout.py) on the real tokenizer (no weights): the prompt is the
chat template's rendering (text for text; a plain prompt token for token), and every document, content part
and separated text is a chunk."""

from __future__ import annotations

import pytest

from chunkcache.agents.chat_layout import chat_template
from chunkcache.agents.template import CompiledTemplate
from chunkcache.api.openai_layout import completion_template, chat_messages, split
from chunkcache.api.openai_schemas import ChatCompletionRequest
from chunkcache.api.service import RequestError

SEP = " # # "


def _bound(tok, tpl, values):  # type: ignore[no-untyped-def]
    req = CompiledTemplate.compile(tpl, tok).bind(values, tok, 8192)
    return req, [tok.decode(req.chunks[p.chunk]) for p in req.placeholders]


@pytest.mark.parametrize("texts,joins", [(["a # # b # # c"], []), ([" # # a # #  # # b # # "], []),
                                         (["d1", "d2", "q # # x"], ["\n\n", "\n\n"]), (["plain"], [])])
def test_split_keeps_the_text(texts, joins) -> None:  # type: ignore[no-untyped-def]
    seg = split(texts, joins, SEP)
    assert "".join(c + j for c, j in zip(seg.chunks, seg.joins, strict=True)) + seg.tail == \
        "".join(t + j for t, j in zip(texts, (*joins, ""), strict=True))
    assert all(c.strip() and SEP not in c.removeprefix(SEP) for c in seg.chunks)  # a leading one stays in front


def test_chat_marks_render_the_chat_template(smollm_tokenizer) -> None:  # type: ignore[no-untyped-def]
    tok = smollm_tokenizer
    body = ChatCompletionRequest(model="m", documents=["Doc one.", "Doc two."], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Part A."}, {"type": "text", "text": "Part B."}]},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": f"Sep one.{SEP}Which doc?"}])
    messages, marked = chat_messages(body, SEP)
    assert marked
    req, chunks = _bound(tok, *chat_template(tok, messages))
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Part A.\nPart B."},
             {"role": "assistant", "content": "Noted."},
             {"role": "user", "content": f"Doc one.\n\nDoc two.\n\nSep one.{SEP}Which doc?"}]
    text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert tok.decode(req.token_ids()) == text  # each piece tokenized on its own: the same text, ids may differ
    assert chunks == ["Part A.", "Part B.", "Noted.", "Doc one.", "Doc two.", "Sep one.", "Which doc?"]


def test_plain_chat_marks_nothing(smollm_tokenizer) -> None:  # type: ignore[no-untyped-def]
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Hi there"}])
    messages, marked = chat_messages(body, SEP)
    assert not marked and [m.text for m in messages] == ["Hi there"]
    with pytest.raises(RequestError, match="last user message"):
        chat_messages(ChatCompletionRequest(model="m", documents=["D"], messages=[
            {"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}]), SEP)


def test_completion_prompt_is_its_own_token_ids(smollm_tokenizer) -> None:  # type: ignore[no-untyped-def]
    tok = smollm_tokenizer
    prompt = "The capital of France is"
    tpl, values, marked = completion_template(prompt, None, SEP, tok)
    req, chunks = _bound(tok, tpl, values)
    assert not marked and req.token_ids() == tok.encode(prompt, add_special_tokens=False)
    assert len(req.suffix_ids) == 1 and req.prefix_ids == ()
    prompt = f"Rome is in Italy.{SEP}Paris is in France.{SEP}Where is Rome?"
    tpl, values, marked = completion_template(prompt, ["A {braced} doc."], SEP, tok)
    req, chunks = _bound(tok, tpl, values)
    assert marked and chunks == ["A {braced} doc.", "Rome is in Italy.", "Paris is in France."]
    assert tok.decode(req.token_ids()) == "A {braced} doc.\n\n" + prompt
    assert tok.decode(req.suffix_ids) == f"{SEP}Where is Rome?"  # the question: computed fresh, never a chunk
    with pytest.raises(RequestError, match="at least 2 tokens"):
        completion_template("Hi", None, SEP, tok)
