"""One chat turn on an AgentRuntime, streamed: text pieces as they decode, stop sequences that end decoding.

`ChatTurn(runtime, template, values, cfg, sampling, stop)` is an iterator of text pieces. It prefills
the prompt on the runtime's one prefill path (blend modes, KVCOMM anchors), decodes token by token
through the incremental detokenizer (runner/detokenize.py, the server's: no piece ends inside a UTF-8
character), and stops decoding at EOS, at max_new_tokens or as soon as the text contains a stop
sequence; the text then ends before it. Text that could be the start of a stop sequence is held back
until it is known not to be. When the iterator is exhausted, `text`, `token_ids`, `stats`, `usage` and
`finish_reason` describe the turn. As in `AgentRuntime.turn`, the response's KV is stored as a chunk and
its text remembered with its token ids, so the next agents that read it reuse that KV; a reply cut
inside a token (a stop sequence, an incomplete character) is read back from its text instead.
Turns on one runtime run one at a time (a lock per runtime): the runtime is not thread-safe, and
LangChain's batch and async calls run turns in threads.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

import torch

from chunkcache.agents.runtime import AgentRuntime
from chunkcache.agents.template import AgentTemplate, Message
from chunkcache.blend.blender import BlendResult
from chunkcache.blend.config import BlendConfig
from chunkcache.runner.decode import SamplingConfig, decode_steps
from chunkcache.runner.detokenize import Detokenizer, held_back
from chunkcache.runner.heap import heap_trimmer

_LOCKS: weakref.WeakKeyDictionary[AgentRuntime, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_trim = heap_trimmer()


def runtime_lock(runtime: AgentRuntime) -> threading.Lock:
    """The lock that serialises turns on runtime."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(runtime, threading.Lock())


class ChatTurn:
    """Iterate for the text pieces (non-empty; they concatenate to `text`); then read the results."""

    def __init__(self, runtime: AgentRuntime, template: AgentTemplate, values: dict[str, str | Message],
                 cfg: BlendConfig, sampling: SamplingConfig, stop: list[str] | None = None,
                 author: str | None = None) -> None:
        self.runtime, self.template, self.values = runtime, template, values
        self.cfg, self.sampling, self.author = cfg, sampling, author
        self.stop = [s for s in stop or [] if s]
        self.text = ""
        self.token_ids: list[int] = []  # generated ids, EOS excluded, up to where decoding stopped
        self.prompt_tokens = 0
        self.stats: dict = {}
        self.finish_reason = "length"
        self._pieces = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop decoding early (the turn's lock is released; its response is not stored)."""
        self._pieces.close()

    def run(self) -> "ChatTurn":
        """Decode the whole turn (no streaming); returns self."""
        for _ in self._pieces:
            pass
        return self

    @property
    def usage(self) -> dict:
        """LangChain's UsageMetadata: input/output/total tokens, cache_read = prompt tokens whose KV was reused."""
        out = len(self.token_ids)
        return {"input_tokens": self.prompt_tokens, "output_tokens": out, "total_tokens": self.prompt_tokens + out,
                "input_token_details": {"cache_read": int(self.stats.get("reused_tokens", 0))}}

    def _cut(self, text: str) -> int | None:
        found = [text.find(s) for s in self.stop if s in text]
        return min(found) if found else None

    def _run(self) -> Iterator[str]:
        rt = self.runtime
        with runtime_lock(rt):
            pre, self.prompt_tokens = rt.prefill(self.template, self.values, self.cfg,
                                                 reserve=self.sampling.max_new_tokens + 1)
            self.stats = pre.stats.as_dict()
            detok, text, sent = Detokenizer(rt.tokenizer), "", 0
            steps = decode_steps(rt.runner, pre.cache, pre.logits, self.sampling, rt.eos_ids, pre.correction)
            while True:
                with torch.inference_mode():
                    step = next(steps, None)
                if step is None:
                    break
                tok, last = step
                if tok in rt.eos_ids:
                    self.finish_reason = "stop"
                else:
                    self.token_ids.append(tok)
                    text += detok.add(tok)
                if last or tok in rt.eos_ids:
                    text += detok.flush()
                cut = self._cut(text)
                if cut is not None:
                    text, self.finish_reason = text[:cut], "stop"
                end = len(text) if cut is not None or last else len(text) - held_back(text, self.stop)
                if end > sent:
                    self.text = text[:end]
                    yield text[sent:end]
                    sent = end
                if cut is not None or last:
                    break
            steps.close()
            self.text = text
            keep_reply(rt, pre, self.prompt_tokens, self.token_ids, self.text, self.cfg)
            del pre
            _trim()  # the turn's KV is freed: return the heap to the OS (bounded RSS in long runs)


def keep_reply(runtime: AgentRuntime, pre: BlendResult, prompt_tokens: int, token_ids: list[int], text: str,
               cfg: BlendConfig) -> None:
    """As AgentRuntime.turn: store the reply's KV (modes that place KV; pre: the turn's BlendResult) and remember
    its token ids, for the longest prefix of the ids that decodes to the text exactly (none: the text is read
    back as text). The reply of a served chat turn is kept the same way (api/sequences.py)."""
    if not text:
        return
    n = len(token_ids)
    while n:
        decoded = runtime.tokenizer.decode(token_ids[:n], skip_special_tokens=True)
        if decoded == text:
            break
        if len(decoded) < len(text):
            return
        n -= 1
    if not n:
        return
    ids = token_ids[:n]
    if cfg.places_kv:
        runtime.keep_response(pre, prompt_tokens, ids)
    runtime._remember(text, tuple(ids))  # noqa: SLF001 - runtime.turn's own bookkeeping
