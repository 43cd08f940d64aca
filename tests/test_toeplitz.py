"""Toeplitz privacy-amplification hash: exact agreement with a dense GF(2) product."""
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdflow.distill.toeplitz import (
    MAX_INPUT_BITS,
    fft_error_bound,
    seed_length,
    toeplitz_hash,
    toeplitz_matrix,
)


def dense_reference(x: np.ndarray, s: np.ndarray, m: int, modified: bool) -> np.ndarray:
    """Independent construction: scipy.linalg.toeplitz with T[i, j] = s[i - j + cols - 1], product mod 2."""
    n = x.size
    cols = n - m if modified else n
    if cols == 0:
        t_part = np.zeros(m, dtype=np.int64)
    else:
        t = scipy.linalg.toeplitz(s[cols - 1 :].astype(np.int64), s[cols - 1 :: -1].astype(np.int64))
        assert t.shape == (m, cols)
        t_part = t @ (x[m:] if modified else x).astype(np.int64)
    y = t_part % 2
    if modified:
        y = (y + x[:m]) % 2
    return y.astype(np.uint8)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 420),
    frac=st.floats(0.0, 1.0),
    modified=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    density=st.sampled_from([0.5, 0.02, 0.98]),
)
def test_matches_dense_gf2_product(n, frac, modified, seed, density):
    m = max(1, min(n, round(frac * n)))
    rng = np.random.default_rng(seed)
    x = (rng.random(n) < density).astype(np.uint8)
    s = (rng.random(seed_length(n, m, modified=modified)) < density).astype(np.uint8)
    y = toeplitz_hash(x, s, m, modified=modified)
    assert y.dtype == np.uint8 and y.shape == (m,)
    np.testing.assert_array_equal(y, dense_reference(x, s, m, modified))


@pytest.mark.parametrize("n,m", [(5000, 2500), (4097, 1), (3001, 3001), (6000, 1234)])
@pytest.mark.parametrize("modified", [False, True])
def test_fft_path_matches_dense(n, m, modified):
    rng = np.random.default_rng(n * 7 + m)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s = rng.integers(0, 2, seed_length(n, m, modified=modified), dtype=np.uint8)
    np.testing.assert_array_equal(toeplitz_hash(x, s, m, modified=modified), dense_reference(x, s, m, modified))


def test_matrix_helper_agrees_with_scipy_construction():
    rng = np.random.default_rng(3)
    n, m = 37, 11
    for modified in (False, True):
        s = rng.integers(0, 2, seed_length(n, m, modified=modified), dtype=np.uint8)
        x = rng.integers(0, 2, n, dtype=np.uint8)
        t = toeplitz_matrix(s, n, m, modified=modified)
        np.testing.assert_array_equal((t.astype(np.int64) @ x) % 2, dense_reference(x, s, m, modified))


def test_worst_case_magnitudes_are_exact_at_large_n():
    # All-ones input and seed: every valid convolution value equals n exactly (the largest possible),
    # so every output bit is n mod 2.  n odd -> all ones; n + 1 even (modified: x[:m] XOR ...) checked too.
    n = (1 << 21) - 1
    m = n // 2
    x = np.ones(n, np.uint8)
    y = toeplitz_hash(x, np.ones(seed_length(n, m), np.uint8), m)
    assert y.all()
    ym = toeplitz_hash(x, np.ones(seed_length(n, m, modified=True), np.uint8), m, modified=True)
    # T' has n - m columns (even here), so T' x is all zeros and y = x[:m] = all ones.
    assert (n - m) % 2 == 0 and ym.all()


def test_random_rows_at_two_million_bits():
    rng = np.random.default_rng(11)
    n, m = 2_000_003, 700_001
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s = rng.integers(0, 2, seed_length(n, m), dtype=np.uint8)
    y = toeplitz_hash(x, s, m)
    xi = x.astype(np.int64)
    for i in np.concatenate([[0, 1, m - 1], rng.integers(0, m, 40)]):
        row = s[i : i + n][::-1]  # T[i, j] = s[i - j + n - 1]
        assert y[i] == int(row @ xi) % 2


def test_linearity_over_gf2():
    rng = np.random.default_rng(5)
    n, m = 100_000, 40_000
    s = rng.integers(0, 2, seed_length(n, m), dtype=np.uint8)
    a = rng.integers(0, 2, n, dtype=np.uint8)
    b = rng.integers(0, 2, n, dtype=np.uint8)
    np.testing.assert_array_equal(toeplitz_hash(a ^ b, s, m), toeplitz_hash(a, s, m) ^ toeplitz_hash(b, s, m))


def test_accepts_bool_arrays():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 2, 300, dtype=np.uint8)
    s = rng.integers(0, 2, seed_length(300, 100), dtype=np.uint8)
    np.testing.assert_array_equal(toeplitz_hash(x.astype(bool), s.astype(bool), 100), toeplitz_hash(x, s, 100))


def test_seed_length():
    assert seed_length(10, 4) == 13
    assert seed_length(10, 4, modified=True) == 9
    assert seed_length(1, 1) == 1


def test_error_bound_has_margin_at_max_block():
    n = MAX_INPUT_BITS
    bound = fft_error_bound(n, n, 1 << 26)
    assert bound < 0.5 / 10
    assert fft_error_bound(10**6, 5 * 10**5, 1_500_000) < bound


@pytest.mark.parametrize(
    "x,s,m,match",
    [
        (np.zeros(10, np.uint8), np.zeros(12, np.uint8), 4, "seed_bits must have length 13"),
        (np.full(10, 2, np.uint8), np.zeros(13, np.uint8), 4, "key_bits must contain only 0/1"),
        (np.zeros(10, np.uint8), np.full(13, 3, np.uint8), 4, "seed_bits must contain only 0/1"),
        (np.zeros(10, np.uint8), np.zeros(13, np.uint8), 0, "out_len"),
        (np.zeros(10, np.uint8), np.zeros(13, np.uint8), 11, "out_len"),
        (np.zeros((2, 5), np.uint8), np.zeros(13, np.uint8), 4, "1-D"),
        (np.zeros(10, np.int64), np.zeros(13, np.uint8), 4, "dtype uint8"),
        (np.zeros(0, np.uint8), np.zeros(0, np.uint8), 1, "n \\(input length in bits\\) must be >= 1"),
    ],
)
def test_bad_input_raises_value_error(x, s, m, match):
    with pytest.raises(ValueError, match=match):
        toeplitz_hash(x, s, m)


def test_block_size_limit_enforced():
    with pytest.raises(ValueError, match="exceeds MAX_INPUT_BITS"):
        seed_length(MAX_INPUT_BITS + 1, 10)
    with pytest.raises(ValueError, match="exceeds MAX_INPUT_BITS"):
        toeplitz_hash(np.zeros(MAX_INPUT_BITS + 1, np.uint8), np.zeros(1, np.uint8), 1)
