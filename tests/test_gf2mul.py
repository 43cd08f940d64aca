"""C carry-less Toeplitz path (qkdflow.distill._gf2mul): bit-identical to the float64-FFT path and to a
dense GF(2) product, for every kernel this CPU can run; the FFT fallback when the extension is disabled."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdflow.distill import toeplitz
from qkdflow.distill.toeplitz import seed_length, toeplitz_hash

gf2 = toeplitz._gf2mul  # None when not built or disabled by QKDFLOW_NO_CEXT: then only the fallback test runs
needs_c = pytest.mark.skipif(gf2 is None, reason="C extension qkdflow.distill._gf2mul not built or disabled")

_AUTO = gf2.hw_kernel() if gf2 is not None else "none"
# "auto" picks the AVX-512 kernel only where PCLMULQDQ exists too, so both can be tested then.
KERNELS = ["portable"] + {"vpclmulqdq-avx512": ["vpclmulqdq-avx512", "pclmulqdq"], "pclmulqdq": ["pclmulqdq"]}.get(
    _AUTO, []
)
FAST_KERNELS = [k for k in KERNELS if k != "portable"] or ["portable"]


def dense_reference(x: np.ndarray, s: np.ndarray, m: int, modified: bool) -> np.ndarray:
    """Independent oracle: T[i, j] = s[i - j + cols - 1] built by scipy (small) or integer np.convolve."""
    n = x.size
    cols = n - m if modified else n
    v = x[m:] if modified else x
    if cols == 0:
        y = np.zeros(m, np.int64)
    elif m * cols <= 300_000:
        t = scipy.linalg.toeplitz(s[cols - 1 :].astype(np.int64), s[cols - 1 :: -1].astype(np.int64))
        y = t @ v.astype(np.int64)
    else:  # same product as a valid-part integer convolution, O(m n) but in C
        y = np.convolve(s.astype(np.int64), v.astype(np.int64))[cols - 1 : cols - 1 + m]
    if modified:
        y = y + x[:m]
    return (y % 2).astype(np.uint8)


def random_case(rng, n, m, modified, density=0.5):
    x = (rng.random(n) < density).astype(np.uint8)
    s = (rng.random(seed_length(n, m, modified=modified)) < density).astype(np.uint8)
    return x, s


@needs_c
def test_backend_is_clmul_when_cpu_supports_it():
    assert toeplitz.BACKEND == ("clmul" if _AUTO != "none" and sys.byteorder == "little" else "fft")
    assert gf2.BASE_WORDS >= 1


@needs_c
@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 3000),
    frac=st.floats(0.0, 1.0),
    modified=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    density=st.sampled_from([0.5, 0.03, 0.97]),
    kernel=st.sampled_from(KERNELS),
)
def test_matches_fft_and_dense(n, frac, modified, seed, density, kernel):
    m = max(1, min(n, round(frac * n)))
    x, s = random_case(np.random.default_rng(seed), n, m, modified, density)
    y = toeplitz_hash(x, s, m, modified=modified, backend=kernel)
    assert y.dtype == np.uint8 and y.shape == (m,)
    np.testing.assert_array_equal(y, toeplitz_hash(x, s, m, modified=modified, backend="fft"))
    np.testing.assert_array_equal(y, dense_reference(x, s, m, modified))


# Word boundaries (64), the recursion's odd/even splits and the BASE_WORDS cut, m = 1 and m = n.
_B = 64 * 64
EDGE = sorted(
    {(n, m) for n in (1, 63, 64, 65, 127, 128, 129, 1023, 1024, 1025, _B - 1, _B, _B + 1, 2 * _B + 64)
     for m in (1, 63, 64, 65, n // 2, n - 1, n) if 1 <= m <= n}
)


@needs_c
@pytest.mark.parametrize("n,m", EDGE)
@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_word_boundary_edges(n, m, kernel):
    rng = np.random.default_rng(n * 1_000_003 + m)
    for modified in (False, True):
        x, s = random_case(rng, n, m, modified)
        np.testing.assert_array_equal(
            toeplitz_hash(x, s, m, modified=modified, backend=kernel), dense_reference(x, s, m, modified)
        )


@needs_c
@pytest.mark.parametrize("n,m", [(8193, 8193), (12_345, 6_789), (16_384, 16_384), (20_000, 2_500), (30_001, 999)])
@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_recursive_sizes_match_dense(n, m, kernel):
    # Blocks above BASE_WORDS words: exercises the Karatsuba middle-product recursion, not only the base case.
    rng = np.random.default_rng(n ^ (m << 20))
    for modified in (False, True):
        x, s = random_case(rng, n, m, modified)
        np.testing.assert_array_equal(
            toeplitz_hash(x, s, m, modified=modified, backend=kernel), dense_reference(x, s, m, modified)
        )


@needs_c
@pytest.mark.parametrize("n,m", [(1_000_003, 500_001), (1_048_576, 131_072), (999_999, 999_999)])
def test_large_blocks_match_fft(n, m):
    rng = np.random.default_rng(n + m)
    x, s = random_case(rng, n, m, False)
    np.testing.assert_array_equal(toeplitz_hash(x, s, m, backend="clmul" if _AUTO != "none" else "portable"),
                                  toeplitz_hash(x, s, m, backend="fft"))


@needs_c
def test_large_modified_matches_fft():
    rng = np.random.default_rng(4)
    n, m = 1_200_001, 400_000  # T' has 800_001 columns, 2 column blocks of the square kernel
    x, s = random_case(rng, n, m, True)
    np.testing.assert_array_equal(toeplitz_hash(x, s, m, modified=True), toeplitz_hash(x, s, m, modified=True,
                                                                                    backend="fft"))


@needs_c
@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_all_ones_worst_case(kernel):
    # Every valid convolution value is n, so every output bit is n mod 2 (no carries in GF(2) anyway,
    # but all words are full and every product term is non-zero).
    for n in (200_001, 200_000):
        m = n // 3
        y = toeplitz_hash(np.ones(n, np.uint8), np.ones(seed_length(n, m), np.uint8), m, backend=kernel)
        assert np.all(y == n % 2)


@needs_c
def test_portable_kernel_on_a_mid_size_block():
    rng = np.random.default_rng(21)
    n, m = 40_000, 9_000
    x, s = random_case(rng, n, m, False)
    np.testing.assert_array_equal(toeplitz_hash(x, s, m, backend="portable"), toeplitz_hash(x, s, m, backend="fft"))


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend must be one of"):
        toeplitz_hash(np.ones(8, np.uint8), np.ones(11, np.uint8), 4, backend="gpu")


@needs_c
def test_c_boundary_checks_lengths_alignment_and_kernel():
    q, rows, cols = 4, 1, 2
    s = np.zeros((rows + cols) * q, np.uint64)
    x = np.zeros(cols * q, np.uint64)
    y = np.zeros(rows * q, np.uint64)
    gf2.toeplitz_words(s, x, y, q, rows, cols, "portable")  # consistent sizes: accepted
    with pytest.raises(ValueError, match="buffer lengths"):
        gf2.toeplitz_words(s[:-1], x, y, q, rows, cols, "portable")
    with pytest.raises(ValueError, match="buffer lengths"):
        gf2.toeplitz_words(s, x, y[:-1], q, rows, cols, "portable")
    with pytest.raises(ValueError, match="buffer lengths"):
        gf2.toeplitz_words(s, x, y, q, rows, cols + 1, "portable")
    with pytest.raises(ValueError, match=">= 1"):
        gf2.toeplitz_words(s, x, y, 0, rows, cols, "portable")
    with pytest.raises(ValueError, match="not supported"):
        gf2.toeplitz_words(s, x, y, q, rows, cols, "avx9000")
    raw = np.zeros(8 * len(s) + 1, np.uint8)
    with pytest.raises(ValueError, match="aligned"):
        gf2.toeplitz_words(raw[1:], x, y, q, rows, cols, "portable")
    with pytest.raises(TypeError):  # output must be writable
        gf2.toeplitz_words(s, x, bytes(8 * rows * q), q, rows, cols, "portable")
    qb = gf2.BASE_WORDS + 1 if gf2.BASE_WORDS % 2 == 0 else gf2.BASE_WORDS + 2  # odd, above the cut
    with pytest.raises(ValueError, match="b \\* 2\\^t"):
        gf2.toeplitz_words(np.zeros(2 * qb, np.uint64), np.zeros(qb, np.uint64), np.zeros(qb, np.uint64),
                           qb, 1, 1, "portable")


def test_fft_fallback_when_extension_disabled():
    code = (
        "import numpy as np\n"
        "from qkdflow.distill import toeplitz as t\n"
        "assert t.BACKEND == 'fft' and t._gf2mul is None, t.BACKEND\n"
        "rng = np.random.default_rng(3)\n"
        "x = rng.integers(0, 2, 5000, dtype=np.uint8); s = rng.integers(0, 2, 5000 + 777 - 1, dtype=np.uint8)\n"
        "y = t.toeplitz_hash(x, s, 777)\n"
        "ref = np.convolve(s.astype(np.int64), x.astype(np.int64))[4999:4999 + 777] % 2\n"
        "assert np.array_equal(y, ref)\n"
        "try:\n"
        "    t.toeplitz_hash(x, s, 777, backend='clmul')\n"
        "except ValueError as e:\n"
        "    assert 'not available or disabled' in str(e)\n"
        "else:\n"
        "    raise AssertionError('clmul backend ran with the extension disabled')\n"
        "print('fallback-ok')\n"
    )
    env = dict(os.environ, QKDFLOW_NO_CEXT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fallback-ok" in out.stdout
