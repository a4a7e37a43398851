"""A write whose end is known on the host matches the one that reads it from the index."""

import torch

from chunkcache.kernels.sparse_attention import plan_sparse_attention


def test_write_with_end_hint_equals_plain_write(tiny_runner):
    r = tiny_runner
    positions = torch.tensor([3, 7, 8, 20], device=r.device)
    plan = plan_sparse_attention(positions, 24)
    assert plan.q_end == 21
    k = torch.randn(r.n_kv_heads, 4, r.head_dim, generator=torch.Generator().manual_seed(0))
    a, b = r.new_cache(24), r.new_cache(24)
    a.write(0, positions, k, k * 2)
    b.write(0, positions, k, k * 2, end=plan.q_end)
    assert a.length == b.length == 21
    torch.testing.assert_close(a.keys[0, :, positions], b.keys[0, :, positions])
    torch.testing.assert_close(b.values[0, :, positions], k * 2)
