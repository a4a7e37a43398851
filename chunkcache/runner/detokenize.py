"""Incremental detokenization (as vLLM does): text pieces that concatenate to the decode.

A byte-level BPE token can end partway through a UTF-8 character; decoding such a prefix gives
U+FFFD at the end. The pending text is held back until the character completes, so no piece ever
ends in an incomplete character. When generation stops inside one (max_tokens reached mid-character),
`flush` drops it: the pieces concatenate to `tokenizer.decode(ids, skip_special_tokens=True)` minus
that one trailing U+FFFD (`complete_text`), while `ids` keep every token, so a caller that wants the
bytes has them. Each step decodes a short window (the tokens since the last emitted piece, plus the
ones before it for context), so a step costs O(window), not O(answer).
"""

from __future__ import annotations

_CONTEXT = 4  # tokens decoded ahead of the pending ones (leading-space and merge context)
_INCOMPLETE = "\ufffd"  # what decode() shows for a trailing, still incomplete UTF-8 character


def complete_text(text: str) -> str:
    """text without the U+FFFD that an incomplete trailing UTF-8 character decodes to."""
    return text[:-1] if text.endswith(_INCOMPLETE) else text


def held_back(text: str, stop: list[str]) -> int:
    """How many trailing characters of text could begin a stop sequence (and so may not be emitted yet)."""
    for n in range(min(len(text), max((len(s) for s in stop), default=1) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stop):
            return n
    return 0


class Detokenizer:
    """Feed token ids one at a time; `add` returns the newly printable text ("" while held back).

    Invariant: `text` (every piece returned so far) is a prefix of decode(ids), no piece ends in U+FFFD,
    and `add(...) + ... + flush()` == complete_text(decode(ids, skip_special_tokens=True)).
    """

    def __init__(self, tokenizer: object, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start: context tokens before the pending ones
        self._read = 0  # first token whose text has not been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)  # type: ignore[attr-defined]

    def add(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) <= len(before) or now.endswith(_INCOMPLETE) or not now.startswith(before):
            return ""
        piece = now[len(before):]
        self.text += piece
        self._read = len(self.ids)
        self._prefix = max(0, self._read - _CONTEXT)
        return piece

    def flush(self) -> str:
        """The held-back text at the end of generation, an incomplete last character dropped; call once."""
        full = complete_text(self._decode(self.ids))
        if not full.startswith(self.text):  # a window disagreed with the full decode: never expected
            raise RuntimeError(f"incremental text {self.text!r} is not a prefix of the decode {full!r}")
        piece = full[len(self.text):]
        self.text = full
        self._read = len(self.ids)
        return piece
