"""qkdflow.prng: the C extension (qkdflow._prng) gives the numpy reference's bits exactly, for any seed, stream,
counters and preparation descriptor; and the reference itself is the documented splitmix64 construction."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdflow import prng

needs_c = pytest.mark.skipif(prng._cprng is None, reason="C extension qkdflow._prng not built")


def _numpy(fn, *args):
    """Run fn with the C path switched off (the numpy reference)."""
    saved, prng._cprng = prng._cprng, None
    try:
        return fn(*args)
    finally:
        prng._cprng = saved


def _mix64(x: int) -> int:
    m = (1 << 64) - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_reference_is_the_documented_keyed_splitmix() -> None:
    k1, k2 = prng.stream_keys(12345, 2)
    counters = np.array([0, 1, 2, 10**9, 2**62 + 7], dtype=np.int64)
    expect = [_mix64((_mix64((int(c) * 0x9E3779B97F4A7C15 + k1) & ((1 << 64) - 1)) ^ k2)) for c in counters]
    assert _numpy(prng.random_u64, 12345, 2, counters).tolist() == expect
    assert prng.random_u64(12345, 2, counters).tolist() == expect        # whichever backend is active


@needs_c
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**70), stream=st.integers(0, 7),
       counters=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=300), two_d=st.booleans())
def test_c_random_u64_matches_numpy(seed, stream, counters, two_d) -> None:
    c = np.array(counters, dtype=np.int64)
    if two_d and c.size % 2 == 0:
        c = c.reshape(2, -1)
    a, b = prng.random_u64(seed, stream, c), _numpy(prng.random_u64, seed, stream, c)
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint64 and np.array_equal(a, b)
    assert np.array_equal(prng.uniform(seed, stream, c), _numpy(prng.uniform, seed, stream, c))


@needs_c
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**64 - 1),
       probs=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3).filter(lambda p: sum(p) > 0),
       bias=st.floats(0.0, 1.0), start=st.integers(0, 2**40), size=st.integers(0, 2000))
def test_c_prep_choices_match_numpy(seed, probs, bias, start, size) -> None:
    p = [x / sum(probs) for x in probs]
    d = prng.prep_descriptor(seed, p, bias)
    slots = start + np.sort(np.random.default_rng(seed % 1000).choice(10 * size + 1, size, replace=False))
    got, ref = prng.prep_choices(d, slots), _numpy(prng.prep_choices, d, slots)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype == np.uint8 and np.array_equal(g, r)


def test_prep_choices_follow_the_descriptor_probabilities() -> None:
    """1e6 slots: class, basis and bit frequencies within 5 sigma of the descriptor's (both backends)."""
    d = prng.prep_descriptor(3, [0.15, 0.55, 0.30], 0.7)
    slots = np.arange(10**6, dtype=np.int64)
    for cls, basis, bit in (prng.prep_choices(d, slots), _numpy(prng.prep_choices, d, slots)):
        n = slots.size
        for k, pk in enumerate((0.15, 0.55, 0.30)):
            assert abs(np.mean(cls == k) - pk) < 5 * np.sqrt(pk * (1 - pk) / n)
        assert abs(np.mean(basis == 0) - 0.7) < 5 * np.sqrt(0.21 / n)
        assert abs(np.mean(bit) - 0.5) < 5 * np.sqrt(0.25 / n)
