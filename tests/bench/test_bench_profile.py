"""`bench rag --profile`: the per-op-group breakdown of one prefill accounts for its wall time."""

from chunkcache.bench.musique import DEFAULT_DATA, load_examples
from chunkcache.bench.profile import format_profile, group_of, profile_prefill
from chunkcache.blend.chunk_source import DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.runner.runner import ModelRunner


def test_ops_fall_into_named_groups():
    assert group_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert group_of("aten::addmm") == "linear projections and MLP"
    assert group_of("aten::index_copy_") == "chunk placement (RoPE shift, KV copies)"
    assert group_of("aten::topk") == "selection (deviation, top-k)"
    assert group_of("aten::empty") == "other"


def test_profile_accounts_for_the_prefill(smollm):
    engine = ChunkCacheEngine(ModelRunner(smollm.model, smollm.tokenizer), DictStore())
    ex = dict(load_examples(DEFAULT_DATA, 1)[0])
    ex["ctxs"] = ex["ctxs"][:3]
    p = profile_prefill(engine, ex, BlendConfig(mode="cacheblend", recompute_ratio=0.15))
    total = sum(p["groups"].values())
    assert p["groups"]["attention"] > 0 and p["groups"]["linear projections and MLP"] > 0
    assert 0.3 * p["wall_s"] < total < 4 * p["wall_s"]  # self times cover the wall time (<= threads x wall)
    assert p["prompt_tokens"] > 1000 and "| attention |" in format_profile(p)
