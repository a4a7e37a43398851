"""The lean decode step computes what the general extend path computes."""

import torch

from chunkcache.runner.decode import SamplingConfig, decode


def test_decode_step_logits_equal_extend(tiny_runner):
    r = tiny_runner
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(4, 256, (37,), generator=g)
    steps = torch.randint(4, 256, (6,), generator=g)
    a, b = r.new_cache(40), r.new_cache(40)  # a grows past its capacity during the steps
    r.extend(prompt, a)
    r.extend(prompt, b)
    for tok in steps:
        lean = r.decode_step(tok.view(1), a)
        general = r.logits(r.extend(tok.view(1), b)[-1:])[0]
        assert a.length == b.length
        torch.testing.assert_close(lean, general, atol=1e-5, rtol=1e-5)
    n = a.length
    torch.testing.assert_close(a.keys[:, :, :n], b.keys[:, :, :n], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.values[:, :, :n], b.values[:, :, :n], atol=1e-6, rtol=1e-6)


def test_greedy_decode_matches_hf_generate(tiny_runner):
    r = tiny_runner
    prompt = torch.randint(4, 256, (20,), generator=torch.Generator().manual_seed(1))
    cache = r.new_cache(20 + 12)
    logits = r.logits(r.extend(prompt, cache)[-1:])[0]
    ours = list(decode(r, cache, logits, SamplingConfig(max_new_tokens=12), set()))
    with torch.no_grad():
        out = r.model.generate(prompt[None], max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=0)
    assert ours == out[0, 20:].tolist()
