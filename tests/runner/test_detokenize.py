"""Incremental detokenization with the real tokenizer: pieces concatenate to the exact decode."""

import pytest

from chunkcache.runner.detokenize import Detokenizer

TEXTS = ["Marie Curie est née à Varsovie, 東京 → café",
         "上海是中国最大的城市。",
         "Emoji 😀👍🏽 and a family 👨‍👩‍👧, then naïve façade",
         "Hello , world . It 's  fine\n\n  x"]


def _pieces(tok, ids):
    d = Detokenizer(tok)
    return [d.add(i) for i in ids] + [d.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_concatenate_to_the_decode(smollm_tokenizer, text):
    ids = smollm_tokenizer.encode(text, add_special_tokens=False)
    pieces = _pieces(smollm_tokenizer, ids)
    assert "".join(pieces) == smollm_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in p for p in pieces)


def test_incomplete_character_is_held_back(smollm_tokenizer):
    ids = smollm_tokenizer.encode("東", add_special_tokens=False)
    assert len(ids) > 1  # a CJK character split over byte tokens
    d = Detokenizer(smollm_tokenizer)
    assert [d.add(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert d.add(ids[-1]) == "東"
    assert d.flush() == ""


def test_special_tokens_are_skipped_and_an_unfinished_character_dropped(smollm_tokenizer):
    tok = smollm_tokenizer
    ids = tok.encode("café 東", add_special_tokens=False)
    with_eos = ids[:-1] + [tok.eos_token_id]
    pieces = _pieces(tok, with_eos)
    decoded = tok.decode(with_eos, skip_special_tokens=True)
    assert decoded.endswith("\ufffd")  # generation ended mid-character
    assert "".join(pieces) == decoded[:-1] == "café "  # the incomplete character is dropped, not flushed


def test_cut_mid_character_drops_only_the_incomplete_one(smollm_tokenizer):
    """max_tokens reached inside a CJK character: every complete character is kept, the cut one is not."""
    tok = smollm_tokenizer
    ids = tok.encode(TEXTS[1], add_special_tokens=False)
    cuts = [k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd")]
    assert len(cuts) >= 3, cuts  # the text has characters split over several tokens
    for k in cuts:
        d = Detokenizer(tok)
        pieces = [d.add(i) for i in ids[:k]] + [d.flush()]
        assert "".join(pieces) == d.text == tok.decode(ids[:k])[:-1] and TEXTS[1].startswith(d.text)
        assert not any("\ufffd" in p for p in pieces) and d.ids == ids[:k]
