"""Agent templates with the real tokenizer: layout, placeholder ids, bad input."""

import pytest

from chunkcache.agents.template import AgentTemplate, CompiledTemplate, Message


@pytest.fixture(scope="module")
def tok(smollm):
    return smollm.tokenizer


def test_layout_matches_piecewise_tokenization(tok):
    tpl = AgentTemplate("t", "You are a judge.", "Passages:\n{context}\n\nQuestion: {question}\nAnswer briefly.")
    ct = CompiledTemplate.compile(tpl, tok)
    assert [s.name for s in ct.slots] == ["context", "question"]
    enc = lambda t: tuple(tok.encode(t, add_special_tokens=False))  # noqa: E731
    assert ct.slots[0].follow_ids == enc("\n\nQuestion: ")
    assert ct.slots[1].follow_ids == ()
    assert tok.decode(ct.prefix_ids).endswith("You are a judge.<|im_end|>\n<|im_start|>user\nPassages:\n")
    assert tok.decode(ct.suffix_ids) == "\nAnswer briefly.<|im_end|>\n<|im_start|>assistant\n"
    p = ct.bind({"context": "Paris is in France.", "question": Message("Where is Paris?")}, tok, 8192)
    ctx, q = p.placeholders
    assert p.chunks[ctx.chunk] == enc("Paris is in France.") and p.chunks[ctx.follow] == ct.slots[0].follow_ids
    assert (ctx.name, ctx.document, q.name, q.document, q.follow) == ("context", True, "question", False, None)
    assert ctx.context_digest != q.context_digest  # q's offsets depend on the context's contents
    assert p.token_ids() == list(ct.prefix_ids) + list(enc("Paris is in France.")) + list(ct.slots[0].follow_ids) \
        + list(enc("Where is Paris?")) + list(ct.suffix_ids)
    ctx_end = len(ct.prefix_ids) + len(enc("Paris is in France."))
    assert p.chunk_offsets[q.chunk] == ctx_end + len(ct.slots[0].follow_ids)
    assert p.responses == ()  # no generated ids given
    gen = ct.bind({"context": Message("x", (1, 2, 3)), "question": "q?"}, tok, 8192)
    assert gen.chunks[0] == (1, 2, 3) and gen.responses == (0,)  # a generated message keeps its ids


def test_reader_keys_depend_on_what_precedes(tok):
    a = CompiledTemplate.compile(AgentTemplate("a", "Role A.", "{x}\n{y}"), tok)
    b = CompiledTemplate.compile(AgentTemplate("b", "Role B.", "{x}\n{y}"), tok)
    a2 = CompiledTemplate.compile(AgentTemplate("a2", "Role A.", "{x}\n{y}\nmore {z}"), tok)
    assert a.slots[0].reader_key != b.slots[0].reader_key
    assert a.slots[0].reader_key == a2.slots[0].reader_key  # same prefix, same following text
    assert a.slots[1].reader_key != a2.slots[1].reader_key  # following text differs


def test_bad_input(tok):
    ct = CompiledTemplate.compile(AgentTemplate("t", "r", "Q: {question}\nA: {answer}"), tok)
    with pytest.raises(ValueError, match="no placeholder 'answr'"):
        ct.bind({"question": "q", "answer": "a", "answr": "a"}, tok, 8192)
    with pytest.raises(ValueError, match="no value for placeholder 'answer'"):
        ct.bind({"question": "q"}, tok, 8192)
    with pytest.raises(ValueError, match="placeholder 'answer' is empty"):
        ct.bind({"question": "q", "answer": ""}, tok, 8192)
    with pytest.raises(ValueError, match="exceeds the model context of 64.*'answer'"):
        ct.bind({"question": "q", "answer": "word " * 100}, tok, 64)
    with pytest.raises(ValueError, match="appears twice"):
        AgentTemplate("d", "r", "{a} {a}")
    with pytest.raises(ValueError, match="plain identifier"):
        AgentTemplate("d", "r", "{a.b}")
    with pytest.raises(ValueError, match="malformed"):
        AgentTemplate("d", "r", "{a")
