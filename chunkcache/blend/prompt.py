"""Turn text (system, chunks, question) into a BlendRequest with the model's chat template.

The template is rendered once around a marker to find the text before the user content (the
prefix) and after it (closes the turn and opens the assistant's). Each piece is tokenized on its
own, so a chunk has the same ids wherever it lands, and every mode sees identical token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from chunkcache.blend.request import BlendRequest

DEFAULT_SYSTEM = ("You are a helpful assistant. Answer the question using the passages given by the user. "
                  "Answer with a short phrase.")
_MARK = "\uE000CHUNKCACHE\uE000"


@dataclass(frozen=True)
class PromptTemplate:
    """prefix_text + chunk texts + question_text.format(question) + suffix_text."""

    prefix_text: str
    suffix_text: str
    question_text: str = "\nQuestion: {question}"

    @classmethod
    def from_tokenizer(cls, tokenizer, system: str = DEFAULT_SYSTEM) -> "PromptTemplate":
        if getattr(tokenizer, "chat_template", None):
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": _MARK}]
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            before, after = text.split(_MARK)
            return cls(before, after)
        return cls(system + "\n\n", "\nAnswer:")


class PromptBuilder:
    def __init__(self, tokenizer, template: PromptTemplate) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.prefix_ids = tuple(self.encode(template.prefix_text))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chunk_ids(self, text: str) -> tuple[int, ...]:
        if not text or not text.strip():
            raise ValueError("chunk text is empty")
        return tuple(self.encode(text))

    def request(self, chunks: list[str], question: str) -> BlendRequest:
        if not chunks:
            raise ValueError("chunks: the chunk list is empty")
        if not question or not question.strip():
            raise ValueError("question is empty")
        chunk_ids = []
        for i, c in enumerate(chunks):
            try:
                chunk_ids.append(self.chunk_ids(c))
            except ValueError:
                raise ValueError(f"chunks[{i}] is empty") from None
        suffix = self.encode(self.template.question_text.format(question=question) + self.template.suffix_text)
        return BlendRequest.of(self.prefix_ids, chunk_ids, suffix)
