"""End to end with the real default model: engine answer, store reuse, handover to HF generate."""

import pytest
import torch

from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.config import StoreSettings
from chunkcache.runner.decode import SamplingConfig
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_store import ChunkStore

CHUNKS = ["Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. "
          "She was born in Warsaw in 1867.",
          "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889 for the World's Fair.",
          "Warsaw is the capital and largest city of Poland, on the Vistula river."]
QUESTION = "In which city was Marie Curie born?"


@pytest.fixture(scope="module")
def engine(smollm, tmp_path_factory):
    store = ChunkStore(StoreSettings().store_config(tmp_path_factory.mktemp("store")))
    yield ChunkCacheEngine(ModelRunner(smollm.model, smollm.tokenizer), store)
    store.close()


def test_full_and_blended_answers(engine):
    keys = engine.precompute(CHUNKS)
    assert len(set(keys)) == 3 and all(engine.source.store.contains(k) for k in keys)
    full = engine.answer(CHUNKS, QUESTION, BlendConfig(mode="full"), SamplingConfig(max_new_tokens=12))
    blend = engine.answer(CHUNKS, QUESTION, BlendConfig(mode="cacheblend", recompute_ratio=0.3),
                          SamplingConfig(max_new_tokens=12))
    assert "Warsaw" in full.text
    assert "Warsaw" in blend.text
    s = blend.stats
    assert s["chunk_misses"] == 0 and s["chunk_hits"] == 1 + len(CHUNKS)
    assert s["recomputed_tokens"] == round(0.3 * s["context_tokens"])
    suffix_len = len(engine.prompts.request(CHUNKS, QUESTION).suffix_ids)
    assert s["reused_tokens"] == s["prompt_tokens"] - suffix_len - s["recomputed_tokens"]


def test_ratio_one_matches_full_on_real_model(engine):
    req = engine.prompts.request(CHUNKS, QUESTION)
    full = engine.prefill(req, BlendConfig(mode="full"))
    blend = engine.prefill(req, BlendConfig(mode="cacheblend", recompute_ratio=1.0))
    assert (blend.logits - full.logits).abs().max().item() < 1e-3


def test_merged_cache_continues_in_hf_generate(engine):
    """The blended cache handed to HF generate (`cache=`, transformers 5's name for `past_key_values`) is the
    one it continues from: its first step reproduces the blended logits (not naive's, which differ here) and
    it decodes our tokens."""
    req = engine.prompts.request(CHUNKS, QUESTION)
    cfg = BlendConfig(mode="cacheblend", recompute_ratio=0.15)
    blend, naive = engine.prefill(req, cfg, reserve=8), engine.prefill(req, BlendConfig(mode="naive"))
    assert (blend.logits - naive.logits).abs().max().item() > 0.05  # the two caches are distinguishable
    ids = torch.tensor([req.token_ids()])
    n = ids.shape[1]
    ours = engine.generate(req, cfg, SamplingConfig(max_new_tokens=8))
    with torch.no_grad():
        out = engine.runner.model.generate(ids, cache=blend.cache.to_dynamic_cache(n - 1), max_new_tokens=8,
                                           do_sample=False, pad_token_id=engine.tokenizer.eos_token_id,
                                           return_dict_in_generate=True, output_logits=True)
    first = out.logits[0][0].float()
    assert (first - blend.logits).abs().max().item() < 1e-3
    assert (first - naive.logits).abs().max().item() > 0.05
    assert out.sequences[0, n:].tolist()[: len(ours.token_ids)] == ours.token_ids


def test_stream_token_ids_decode_to_the_streamed_text(engine):
    req = engine.prompts.request(CHUNKS, QUESTION)
    cfg, sampling = BlendConfig(mode="naive"), SamplingConfig(max_new_tokens=10)
    items = list(engine.stream(req, cfg, sampling))
    ids = [tok for tok, _, _, _ in items if tok not in engine.eos_ids]
    exact = engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(piece for _, piece, _, _ in items) == exact
    assert engine.generate(req, cfg, sampling).text == exact


@pytest.mark.slow
def test_cjk_answer_is_the_exact_decode(engine):
    """The issue's example: byte-level tokens split CJK characters; none may be lost."""
    req = engine.prompts.request(["北京是中国的首都。上海是中国最大的城市。"], "请用中文回答：上海是什么？")
    ans = engine.generate(req, BlendConfig(mode="full"), SamplingConfig(max_new_tokens=16))
    ids = [t for t in ans.token_ids if t not in engine.eos_ids]
    assert ans.text == engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert "\ufffd" not in ans.text and any(ord(c) > 0x2E80 for c in ans.text), ans.text


@pytest.mark.slow
def test_answer_cut_inside_a_character_drops_it(engine):
    """Issue 19 item 13: max_tokens reached mid-character gives the complete text, never U+FFFD; ids stay whole."""
    req = engine.prompts.request(["北京是中国的首都。上海是中国最大的城市。"], "请用中文回答：上海是什么？")
    cfg = BlendConfig(mode="full")
    ids = engine.generate(req, cfg, SamplingConfig(max_new_tokens=16)).token_ids
    cuts = [k for k in range(1, len(ids)) if engine.tokenizer.decode(ids[:k]).endswith("\ufffd")]
    assert cuts, engine.tokenizer.decode(ids)
    sampling = SamplingConfig(max_new_tokens=cuts[-1])
    ans = engine.generate(req, cfg, sampling)
    assert ans.token_ids == ids[:cuts[-1]]
    assert ans.text == engine.tokenizer.decode(ans.token_ids)[:-1] and "\ufffd" not in ans.text and ans.text
    pieces = [piece for _, piece, _, _ in engine.stream(req, cfg, sampling)]
    assert "".join(pieces) == ans.text and not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("chunks, question, msg", [([], QUESTION, "chunk list is empty"),
                                                    (["a", " "], QUESTION, r"chunks\[1\] is empty"),
                                                    (CHUNKS, "  ", "question is empty")])
def test_bad_input_is_named(engine, chunks, question, msg):
    with pytest.raises(ValueError, match=msg):
        engine.answer(chunks, question)


def test_default_model_uses_its_shipped_critical_layers(engine, tmp_path, monkeypatch):
    """The package ships qcfuse's critical layers for its default model (profiled on HotpotQA dev); the fingerprint
    of the loaded model names that file, and a user's own profile takes precedence."""
    import json
    from pathlib import Path

    import chunkcache
    from chunkcache.blend.model_profile import update_profile
    from chunkcache.blend.qcfuse import critical_layers, fallback_layers

    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path))  # no user profile
    r = engine.runner
    shipped = Path(chunkcache.__file__).parent / "data" / "profiles" / f"{r.fingerprint}.json"
    layers = tuple(json.loads(shipped.read_text())["critical_layers"])
    assert critical_layers(r) == layers != fallback_layers(r.n_layers)
    update_profile(r.fingerprint, critical_layers=[1, 2])
    assert critical_layers(r) == (1, 2)


def test_closing_the_engine_lands_its_queued_writes(smollm, tmp_path):
    """`with engine:` (every CLI command): on exit the store's background writes have landed, so a fresh store
    on the same directory (the next process) holds every entry computed, in its disk tier and its catalog."""
    cfg = StoreSettings().store_config(tmp_path)
    with ChunkCacheEngine(ModelRunner(smollm.model, smollm.tokenizer), ChunkStore(cfg)) as eng:
        keys = eng.precompute(CHUNKS)
    with ChunkStore(cfg) as fresh:
        assert all(fresh.contains(k) and fresh.tier_of(k) == ["disk"] for k in keys)
        assert all(fresh.catalog.get(k) is not None for k in keys)
