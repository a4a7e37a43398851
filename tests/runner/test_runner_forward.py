"""The layer-wise runner reproduces the HF forward, and its cache continues decoding in HF generate."""

import torch

from chunkcache.runner.decode import SamplingConfig, decode
from chunkcache.runner.runner import ModelRunner


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(ids[None]).logits[0].float()


def test_full_forward_matches_hf_tiny(tiny_runner):
    ids = torch.randint(0, 256, (77,), generator=torch.Generator().manual_seed(1))
    cache = tiny_runner.new_cache(77)
    hidden = tiny_runner.extend(ids, cache)
    ours = tiny_runner.logits(hidden)
    ref = _hf_logits(tiny_runner.model, ids)
    assert (ours - ref).abs().max().item() < 1e-4
    assert cache.length == 77


def test_extend_in_pieces_equals_one_pass(tiny_runner):
    ids = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(2))
    one = tiny_runner.new_cache(50)
    h_one = tiny_runner.extend(ids, one)
    two = tiny_runner.new_cache(10)  # grows on demand
    tiny_runner.extend(ids[:31], two)
    h_two = tiny_runner.extend(ids[31:], two)
    torch.testing.assert_close(h_two, h_one[31:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(two.keys[:, :, :50], one.keys[:, :, :50], atol=1e-5, rtol=1e-5)


def test_prompt_longer_than_context_is_refused(tiny_runner):
    ids = torch.zeros(tiny_runner.max_positions + 1, dtype=torch.int64)
    try:
        tiny_runner.extend(ids, tiny_runner.new_cache(8))
    except ValueError as err:
        assert "exceeds the model context" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_greedy_decode_matches_hf_steps_on_handed_out_cache(tiny_runner):
    """Our decode loop and HF forward steps over cache.to_dynamic_cache() give the same tokens and logits."""
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(3))
    cache = tiny_runner.new_cache(40 + 8)
    hidden = tiny_runner.extend(ids, cache)
    dyn = cache.to_dynamic_cache()
    first = tiny_runner.logits(hidden[-1:])[0]
    ours = list(decode(tiny_runner, cache, first, SamplingConfig(max_new_tokens=8), eos_ids=set()))
    theirs, logits = [], first
    with torch.no_grad():
        for _ in range(8):
            theirs.append(int(logits.argmax()))
            out = tiny_runner.model(torch.tensor([[theirs[-1]]]), cache=dyn, use_cache=True)
            dyn, logits = out.past_key_values, out.logits[0, -1].float()
    assert theirs == ours
    assert dyn.get_seq_length() == 48


def test_real_model_forward_matches_hf(smollm):
    runner = ModelRunner(smollm.model, smollm.tokenizer)
    ids = torch.tensor(smollm.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 12))
    hidden = runner.extend(ids, runner.new_cache(ids.numel()))
    diff = (runner.logits(hidden) - _hf_logits(smollm.model, ids)).abs().max().item()
    assert diff < 1e-4, diff
