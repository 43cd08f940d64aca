"""Toeplitz hashing for privacy amplification, exact at every allowed block size.

Family (two-universal; Carter & Wegman 1979, Krawczyk 1994; used for QKD privacy amplification e.g. by
Tang et al., Sci. Rep. 9, 15733 (2019)): ``y = T x mod 2`` with ``T`` an ``m x n`` Toeplitz matrix fixed by
``n + m - 1`` uniformly random seed bits ``s``.  Our index convention is

    T[i, j] = s[i - j + n - 1]        (i < m, j < n)

so the first row of ``T`` is ``s[n-1], s[n-2], ..., s[0]`` and its first column ``s[n-1], ..., s[n+m-2]``
(``scipy.linalg.toeplitz(s[n-1:], s[n-1::-1])``).  Then ``y_i = (s * x)[i + n - 1]``: the *valid* part of
the linear convolution, which a cyclic convolution of any length ``L >= n + m - 1`` reproduces without
wrap-around.  Both ends must use the same convention; it is part of the protocol.

Modified Toeplitz (Hayashi & Tsurumaru, IEEE Trans. Inf. Theory 62, 2213 (2016), "More efficient privacy
amplification with less random seeds via dual universal hash function"): ``T_mod = (I_m | T')`` with ``T'``
an ``m x (n - m)`` Toeplitz matrix from ``n - 1`` seed bits, same index convention with ``n - m`` in place of
``n``: ``y = x[:m] XOR T' x[m:]``.  Also two-universal, fewer seed bits, and a shorter convolution.

Exactness.  The integer convolution ``c = s * x`` of 0/1 vectors is computed with a float64 real FFT
(scipy.fft / pocketfft) of length ``L`` and rounded; ``y = round(c) mod 2``.  A wrong bit needs an absolute
error >= 1/2 in some ``c_k``.  Norm-wise error analysis (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., Thm 24.2, radix-2 Cooley-Tukey): a computed FFT has relative 2-norm error at most
``delta = k*eta/(1 - k*eta)``, ``k = ceil(log2 L)``, ``eta = mu + gamma_4 (sqrt 2 + mu)``, ``gamma_4 = 4u/(1-4u)``,
``u = 2^-53`` and ``mu`` the twiddle-factor error (we take ``mu = 2u``; pocketfft computes twiddles to ~1 ulp).
With ``X = F x``, ``S = F s`` (unnormalised DFT): ``||X||_2 = sqrt(L)||x||_2 <= sqrt(L n)``,
``||S||_inf <= ||s||_1 <= n + m - 1 =: w``, ``||X||_inf <= n <= w``.  Perturbing both transforms, the pointwise
product (one complex multiply, relative error ``<= sqrt(2) gamma_2``) and the inverse transform (``F^-1 = F^H/L``,
plus one scaling rounding) gives

    ||c_hat - c||_inf <= ||c_hat - c||_2 <= sqrt(n) * w * (3 delta + 4u) + O(delta^2)  =: B(n, m, L).

At the largest allowed block, ``n = m = MAX_INPUT_BITS = 2^25`` (``L <= 2^26``, ``k = 26``): ``B ~= 0.026``,
i.e. a margin of ~19x below 1/2.  Where the theorem is loose: it is proven for radix-2; pocketfft uses
radix 2/3/4/5 passes and a real-input post-processing pass, whose error constants are of the same order, and
the margin covers them.  Besides the a-priori bound (checked per call, ``ValueError`` beyond the size limit),
every call checks the observed rounding residual ``max |c - round(c)| < 1/4`` and raises ``RuntimeError``
otherwise (never observed; the residual measured at ``n = 10^7`` is ~1e-9).

Throughput: the cost is three real FFTs of length ``L >= n + m - 1`` (``L >= n - 1`` for the modified family),
i.e. O(n log n) in float64.  Packing several bits per float digit breaks exactness beyond ~2^18-bit blocks
(the digit fields must each hold a count up to n), and numpy has no carry-less multiply.

Fast path (``BACKEND == "clmul"``).  The optional C extension ``qkdflow.distill._gf2mul`` (built by setup.py,
skipped where no compiler exists) computes the same product natively in GF(2)[z] on 64-bit words with the
CPU's carry-less multiply (512-bit VPCLMULQDQ where AVX-512 has it, else PCLMULQDQ; chosen at run time)
and the Karatsuba middle-product recursion (Hanrot, Quercia & Zimmermann, AAECC 14, 415 (2004); Fan &
Hasan, IEEE Trans. Comput. 56, 224 (2007)): integer arithmetic only, hence exact with no error bound, and
bit-identical to the FFT path (tests/test_gf2mul.py).  With ``H = 64 q`` bits per block and the input padded
with zeros to ``N = cols * H`` bits, ``y_i = sum_j S[i + N - j] x_j`` where ``S = z^(N - n + 1) s``, which is
the convention above.  It is used when the extension imports, the CPU has the instruction, the machine is
little-endian and the environment variable ``QKDFLOW_NO_CEXT`` is unset (or ``0``); otherwise the float64
FFT path runs.  ``BACKEND`` names the active path.  Measured figures: tools/bench_privacy_amplification.py.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import scipy.fft as sp_fft

_gf2mul = None
if os.environ.get("QKDFLOW_NO_CEXT", "0") in ("", "0"):
    try:  # optional C extension (setup.py); absent where it could not be compiled
        from qkdflow.distill import _gf2mul
    except ImportError:  # pragma: no cover - depends on the build
        pass

__all__ = [
    "BACKEND",
    "MAX_INPUT_BITS",
    "seed_length",
    "toeplitz_hash",
    "fft_error_bound",
    "toeplitz_matrix",
]

#: Largest input block (bits).  The a-priori float64 error bound ``B`` stays ~19x below 1/2 up to here.
MAX_INPUT_BITS: int = 1 << 25

_U = 2.0**-53  # unit roundoff of IEEE binary64
_MU = 2.0 * _U  # assumed twiddle-factor error (see module docstring)
_BOUND_LIMIT = 1.0 / 16.0  # refuse to run if the proven bound exceeds this (never happens within limits)


def _select_backend() -> str:
    # The C code reads numpy's little-endian packed words as native uint64.
    if _gf2mul is None or sys.byteorder != "little" or _gf2mul.hw_kernel() == "none":
        return "fft"
    return "clmul"


#: Active path for ``toeplitz_hash``: ``"clmul"`` (C extension, hardware carry-less multiply) or ``"fft"``.
BACKEND: str = _select_backend()
#: Accepted ``backend`` values: "clmul" = fastest C kernel; the C kernels by name and "portable" (the C code's
#: software carry-less multiply, slow) exist so tests can check every kernel on one machine.
_BACKENDS = ("fft", "clmul", "vpclmulqdq-avx512", "pclmulqdq", "portable")


def _check_sizes(n: int, m: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n (input length in bits) must be an integer, got {n!r}")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise ValueError(f"out_len (output length in bits) must be an integer, got {m!r}")
    if n < 1:
        raise ValueError(f"n (input length in bits) must be >= 1, got {n}")
    if n > MAX_INPUT_BITS:
        raise ValueError(f"n (input length in bits) = {n} exceeds MAX_INPUT_BITS = {MAX_INPUT_BITS}")
    if m < 1 or m > n:
        raise ValueError(f"out_len must satisfy 1 <= out_len <= n = {n}, got {m}")


def seed_length(n: int, m: int, *, modified: bool = False) -> int:
    """Seed bits needed to hash ``n`` input bits to ``m`` output bits.

    ``n + m - 1`` for the plain Toeplitz family, ``n - 1`` for the modified (I | T') family
    (Hayashi-Tsurumaru 2016).
    """
    _check_sizes(n, m)
    return n - 1 if modified else n + m - 1


def fft_error_bound(n: int, m: int, fft_len: int) -> float:
    """A-priori bound ``B(n, m, L)`` on the max absolute error of the float64 FFT convolution.

    See the module docstring for the derivation (Higham 2002, Thm 24.2, norm-wise).  ``n`` is the
    length of the bit vector being transformed with the seed, ``m`` the number of valid outputs.
    """
    k = max(1, math.ceil(math.log2(fft_len)))
    gamma4 = 4 * _U / (1 - 4 * _U)
    eta = _MU + gamma4 * (math.sqrt(2.0) + _MU)
    delta = k * eta / (1 - k * eta)
    w = n + m - 1
    return math.sqrt(n) * w * (3 * delta + 4 * _U) * (1 + delta)


def _as_bits(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of bits, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8 (values 0/1), got {arr.dtype}")
    if arr.size and int(arr.max()) > 1:
        raise ValueError(f"{name} must contain only 0/1 values")
    return arr


def _pad_words(k: int, base: int) -> int:
    """Smallest ``q >= k`` of the form ``b * 2^t`` with ``b <= base``: the C recursion halves ``q`` down to ``b``."""
    t = 0
    while -(-k >> t) > base:
        t += 1
    return (-(-k >> t)) << t


def _valid_conv_parity_c(x: np.ndarray, s: np.ndarray, m: int, kernel: str) -> np.ndarray:
    """Same bits as ``_valid_conv_parity_fft`` via the C extension (exact GF(2)[z] arithmetic)."""
    if _gf2mul is None or sys.byteorder != "little":
        raise ValueError("backend: the C extension qkdflow.distill._gf2mul is not available or disabled")
    n = x.size
    kx, km = -(-n // 64), -(-m // 64)  # words of input / output
    q = _pad_words(min(kx, km), _gf2mul.BASE_WORDS)  # square block size in words
    cols, rows = -(-kx // q), -(-km // q)
    h_bits = 64 * q
    xw = np.zeros(cols * q, np.uint64)
    xp = np.packbits(x, bitorder="little")
    xw.view(np.uint8)[: xp.size] = xp
    # S = z^(N - n + 1) s (N = cols * H): then y_i = sum_j S[i + N - j] x_j, the kernel's convention.
    off = cols * h_bits - n + 1
    sbits = np.zeros((rows + cols) * h_bits, np.uint8)
    sbits[off : off + s.size] = s
    sw = np.packbits(sbits, bitorder="little").view(np.uint64)
    yw = np.empty(rows * q, np.uint64)
    _gf2mul.toeplitz_words(sw, xw, yw, q, rows, cols, kernel)
    return np.unpackbits(yw.view(np.uint8), count=m, bitorder="little")


def _valid_conv_parity(x: np.ndarray, s: np.ndarray, m: int, backend: str) -> np.ndarray:
    """Bits ``y_i = (s * x)[i + n - 1] mod 2`` for ``i < m``; ``len(s) == len(x) + m - 1``."""
    if backend == "fft":
        return _valid_conv_parity_fft(x, s, m)
    return _valid_conv_parity_c(x, s, m, "auto" if backend == "clmul" else backend)


def _valid_conv_parity_fft(x: np.ndarray, s: np.ndarray, m: int) -> np.ndarray:
    """Float64-FFT path of ``_valid_conv_parity`` (exact by the bound in the module docstring)."""
    n = x.size
    full = n + m - 1
    if n * m <= 4096:
        # Tiny blocks: direct integer convolution is exact and cheaper than FFT setup.
        c = np.convolve(s.astype(np.int64), x.astype(np.int64))[n - 1 : n - 1 + m]
        return (c & 1).astype(np.uint8)
    fft_len = sp_fft.next_fast_len(full, real=True)
    bound = fft_error_bound(n, m, fft_len)
    if bound > _BOUND_LIMIT:  # unreachable within MAX_INPUT_BITS; kept as the guard the proof relies on
        raise ValueError(f"block too large for exact float64 FFT: error bound {bound:.3g} > {_BOUND_LIMIT}")
    spec = sp_fft.rfft(x, fft_len)
    spec *= sp_fft.rfft(s, fft_len)
    c = sp_fft.irfft(spec, fft_len, overwrite_x=True)[n - 1 : n - 1 + m]
    r = np.rint(c)
    resid = float(np.max(np.abs(np.subtract(c, r, out=c))))
    if resid >= 0.25:
        raise RuntimeError(f"FFT rounding residual {resid:.3g} >= 0.25: result not provably exact")
    return (r.astype(np.int32) & 1).astype(np.uint8)


def toeplitz_hash(
    key_bits: np.ndarray,
    seed_bits: np.ndarray,
    out_len: int,
    *,
    modified: bool = False,
    backend: str | None = None,
) -> np.ndarray:
    """Hash ``n = len(key_bits)`` bits to ``out_len`` bits with the Toeplitz matrix given by ``seed_bits``.

    ``key_bits``/``seed_bits``: 1-D uint8 (0/1) or bool arrays; ``len(seed_bits)`` must equal
    ``seed_length(n, out_len, modified=modified)``.  Returns a uint8 0/1 array of length ``out_len``.
    Exact (see module docstring); ``n <= MAX_INPUT_BITS``.  ``backend``: ``None`` uses ``BACKEND``;
    ``"fft"`` or ``"clmul"`` force a path (for tests and benchmarks; all paths give identical bits).
    """
    if backend is None:
        backend = BACKEND
    elif backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS} or None, got {backend!r}")
    x = _as_bits(key_bits, "key_bits")
    s = _as_bits(seed_bits, "seed_bits")
    n = x.size
    _check_sizes(n, out_len)
    m = int(out_len)
    need = seed_length(n, m, modified=modified)
    if s.size != need:
        raise ValueError(f"seed_bits must have length {need} for n={n}, out_len={m}, got {s.size}")
    if not modified:
        return _valid_conv_parity(x, s, m, backend)
    if m == n:  # T' has no columns: (I | T') = I
        return x.copy()
    y = _valid_conv_parity(x[m:], s, m, backend)
    y ^= x[:m]
    return y


def toeplitz_matrix(seed_bits: np.ndarray, n: int, m: int, *, modified: bool = False) -> np.ndarray:
    """Dense ``m x n`` uint8 matrix of the hash (for tests and small examples only; O(m n) memory)."""
    s = _as_bits(seed_bits, "seed_bits")
    _check_sizes(n, m)
    if s.size != seed_length(n, m, modified=modified):
        raise ValueError(f"seed_bits must have length {seed_length(n, m, modified=modified)}, got {s.size}")
    cols = n - m if modified else n
    i = np.arange(m)[:, None]
    j = np.arange(cols)[None, :]
    t = s[i - j + cols - 1] if cols else np.zeros((m, 0), np.uint8)
    if modified:
        return np.concatenate([np.eye(m, dtype=np.uint8), t], axis=1)
    return t
