"""RoPE shift: reference vs RoPE applied directly at the target position; Triton kernel vs reference."""

import pytest
import torch

from chunkcache.kernels.rope_shift import rope_shift, rope_shift_ref, rope_shift_triton

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _inv_freq(d: int, theta: float = 1e5) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # [d/2]


def _rope_at(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """HF llama rotary embedding in float64: x * cos + rotate_half(x) * sin. x [..., T, d]."""
    angle = positions.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]  # [T, d/2]
    cos, sin = torch.cat((angle.cos(), angle.cos()), -1), torch.cat((angle.sin(), angle.sin()), -1)  # [T, d]
    x1, x2 = x.to(torch.float64).chunk(2, dim=-1)
    return x.to(torch.float64) * cos + torch.cat((-x2, x1), -1) * sin


@pytest.mark.parametrize("into", ["new", "buffer", "keys"])
@pytest.mark.parametrize("d", [64, 128])
def test_ref_matches_rope_at_target_position(d, into):
    """Every way out is given (none: a new tensor; a separate fp32 buffer, e.g. the merged cache: written in place
    without temporaries; keys itself) gives the keys RoPE puts at the target positions."""
    g = torch.Generator().manual_seed(d)
    raw = torch.randn(2, 3, 40, d, generator=g)
    stored_at = torch.arange(40) + 1  # chunk stored behind a 1-token precompute prefix
    target = torch.arange(40) + 700  # chunk placed at offset 700
    inv_freq = _inv_freq(d)
    stored = _rope_at(raw, stored_at, inv_freq).to(torch.float32)
    cache = torch.zeros(2, 3, 50, d)  # a merged cache; the chunk lands at 5..44
    out = {"new": None, "buffer": cache[:, :, 5:45], "keys": stored}[into]
    shifted = rope_shift_ref(stored, target - stored_at, inv_freq.to(torch.float32), out=out)
    assert out is None or shifted is out
    torch.testing.assert_close(shifted.to(torch.float64), _rope_at(raw, target, inv_freq), atol=5e-4, rtol=0)
    if into == "buffer":
        assert cache[:, :, :5].abs().max() == 0 and cache[:, :, 45:].abs().max() == 0


def test_ref_out_aliases_keys():
    keys = torch.randn(3, 9, 64)
    deltas = torch.arange(9) * 11 - 20
    expected = rope_shift_ref(keys, deltas, _inv_freq(64).float())
    same = rope_shift_ref(keys, deltas, _inv_freq(64).float(), out=keys)
    assert same is keys
    torch.testing.assert_close(keys, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead,t,d", [((), 1, 64), ((2, 3), 33, 64), ((1, 8), 70, 128), ((5,), 17, 128)])
def test_triton_matches_ref(lead, t, d, dtype):
    g = torch.Generator().manual_seed(t * d)
    keys = torch.randn(*lead, t, d, generator=g).to(dtype)
    deltas = torch.randint(-50, 9000, (t,), generator=g)
    inv_freq = _inv_freq(d).float()
    got = rope_shift(keys, deltas, inv_freq, use_triton=True)
    want = rope_shift_ref(keys, deltas, inv_freq)
    assert got.dtype == dtype and got.shape == keys.shape
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("use_triton", [False, True])
def test_one_delta_for_every_token(use_triton):
    """deltas [1] rotates every token by that delta: the same keys as the delta repeated [T]."""
    g = torch.Generator().manual_seed(2)
    keys = torch.randn(2, 3, 25, 64, generator=g)
    inv_freq = _inv_freq(64).float()
    got = rope_shift(keys, torch.tensor([1234]), inv_freq, use_triton=use_triton)
    torch.testing.assert_close(got, rope_shift_ref(keys, torch.full((25,), 1234), inv_freq), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="deltas"):
        rope_shift(keys, torch.tensor([1, 2]), inv_freq, use_triton=use_triton)


def test_triton_in_place_and_into_cache_slice():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 3, 21, 64, generator=g)
    deltas = torch.arange(21) + 300
    inv_freq = _inv_freq(64).float()
    want = rope_shift_ref(keys, deltas, inv_freq)
    in_place = keys.clone()
    assert rope_shift_triton(in_place, deltas, inv_freq, out=in_place) is in_place
    torch.testing.assert_close(in_place, want, atol=1e-5, rtol=1e-5)
    merged = torch.zeros(2, 3, 50, 64, dtype=torch.float16)  # merged cache; the chunk lands at 10..30
    rope_shift_triton(keys, deltas, inv_freq, out=merged[:, :, 10:31])
    torch.testing.assert_close(merged[:, :, 10:31].float(), want.half().float(), atol=2e-3, rtol=2e-3)
    assert merged[:, :, :10].abs().max() == 0 and merged[:, :, 31:].abs().max() == 0


def test_triton_non_viewable_strides():
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(4, 3, 19, 64, generator=g).transpose(0, 1)  # [3, 4, 19, 64], leading dims not mergeable
    out = torch.empty(4, 3, 19, 64).transpose(0, 1)
    deltas = torch.arange(19) * 3
    rope_shift_triton(keys, deltas, _inv_freq(64).float(), out=out)
    torch.testing.assert_close(out, rope_shift_ref(keys, deltas, _inv_freq(64).float()), atol=1e-5, rtol=1e-5)


def test_shape_errors():
    with pytest.raises(ValueError):
        rope_shift_triton(torch.randn(3, 8, 64), torch.arange(7), _inv_freq(64).float())
    with pytest.raises(ValueError):
        rope_shift_triton(torch.randn(3, 8, 64), torch.arange(8), _inv_freq(128).float())
