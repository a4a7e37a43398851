"""ChatMessage made of several chunks: its text is the parts and joins in order, or it is refused."""

import pytest

from chunkcache.agents.chat_layout import ChatMessage


def test_parts_and_joins_make_up_the_text():
    m = ChatMessage.of_parts("user", ["doc one", "doc two", "question?"], ["\n\n", "\n"], name="u")
    assert m.text == "doc one\n\ndoc two\nquestion?"
    assert m.chunks(3) == [("m3_0", "doc one", "\n\n"), ("m3_1", "doc two", "\n"), ("m3_2", "question?", "")]
    single = ChatMessage.of_parts("user", ["only"], [])
    assert (single.text, single.parts, single.chunks(0)) == ("only", (), [("m0", "only", "")])


def test_mismatched_parts_are_refused_by_name():
    with pytest.raises(ValueError, match=r"user message: 3 parts take 2 joins, got 1"):
        ChatMessage.of_parts("user", ["a", "b", "c"], ["\n"])
    with pytest.raises(ValueError, match="parts and joins do not make up its text"):
        ChatMessage("user", "a b", parts=("a", "c"), joins=(" ",))
    with pytest.raises(ValueError, match="parts and joins do not make up its text"):
        ChatMessage("user", "a b", parts=("a", "b"), joins=())
