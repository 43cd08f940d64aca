#!/usr/bin/env python3
"""Benchmark: Toeplitz privacy amplification, verification hash and Wegman-Carter tags, one core.

Usage:  .venv/bin/python tools/bench_privacy_amplification.py [--sizes 1e6 1e7] [--ratios 0.5 0.25]
        [--repeats 5] [--skip-auth] [--c-kernel pclmulqdq]

Toeplitz: for every (n, m = ratio * n) it times, in the same process and interleaved run by run,
  * baseline  - the reference digest's method (shared/reference/postprocessing.md Sec. 3): numpy float64
                rfft of the *full* linear convolution padded to a power of two, rint, mod 2;
  * fft       - qkdflow.distill.toeplitz.toeplitz_hash(backend="fft") (valid-part cyclic convolution,
                scipy.fft, 5-smooth length, a-priori error bound + residual check);
  * clmul     - toeplitz_hash(backend="clmul"): the C extension qkdflow.distill._gf2mul (carry-less
                multiply + Karatsuba middle product; packing/unpacking of bits included in the timing);
  * modified  - toeplitz_hash with the active BACKEND and the modified (I | T') family (n - 1 seed bits).
Each timing is one whole call (input validation, transforms or packing, parity, output array), median of
``--repeats`` runs; outputs of all are checked equal (modified: against its own dense-free identity
y = x[:m] ^ T'x[m:] computed by the plain routine).  Rates are input bits per second.  The clmul column
is skipped (shown as "-") when the extension is not built or the CPU lacks a carry-less multiply.
Thread pools are pinned to 1 (OMP/OPENBLAS/MKL) before numpy is imported.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from qkdflow.distill.auth import Authenticator, KeyPool  # noqa: E402
from qkdflow.distill import toeplitz as toeplitz_mod  # noqa: E402
from qkdflow.distill.toeplitz import seed_length, toeplitz_hash  # noqa: E402
from qkdflow.distill.verify import VerificationHash  # noqa: E402


def reference_rfft_hash(x: np.ndarray, s: np.ndarray, m: int) -> np.ndarray:
    """The reference digest's method: full linear convolution via numpy rfft at power-of-two length."""
    n = x.size
    full = n + s.size - 1
    size = 1 << (full - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(x.astype(np.float64), size) * np.fft.rfft(s.astype(np.float64), size), size)
    return (np.rint(c[n - 1 : n - 1 + m]).astype(np.int64) & 1).astype(np.uint8)


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def bench_toeplitz(sizes: list[int], ratios: list[float], repeats: int, c_backend: str = "clmul") -> None:
    have_c = toeplitz_mod.BACKEND == "clmul"
    kernel = (toeplitz_mod._gf2mul.hw_kernel() if c_backend == "clmul" else c_backend) if have_c else "n/a"
    print("== Toeplitz hash, one core; rate = input Mbit/s (median of %d runs); BACKEND=%s, C kernel=%s =="
          % (repeats, toeplitz_mod.BACKEND, kernel))
    print(f"{'n':>10} {'m':>10} {'base s':>8} {'fft s':>8} {'clmul s':>8} {'modif s':>8} "
          f"{'base Mb/s':>10} {'fft Mb/s':>9} {'clmul Mb/s':>11} {'modif Mb/s':>11} "
          f"{'fft/base':>9} {'clmul/base':>11} {'clmul/fft':>10}")
    rng = np.random.default_rng(12345)
    for n in sizes:
        for ratio in ratios:
            m = max(1, int(round(ratio * n)))
            x = rng.integers(0, 2, n, dtype=np.uint8)
            s = rng.integers(0, 2, seed_length(n, m), dtype=np.uint8)
            sm = s[: seed_length(n, m, modified=True)]
            tb, tf, tc, tm = [], [], [], []
            for _ in range(repeats):  # interleaved so machine-load drift hits all alike
                dt, yb = timed(reference_rfft_hash, x, s, m)
                tb.append(dt)
                dt, yf = timed(toeplitz_hash, x, s, m, backend="fft")
                tf.append(dt)
                if have_c:
                    dt, yc = timed(toeplitz_hash, x, s, m, backend=c_backend)
                    tc.append(dt)
                    assert np.array_equal(yc, yf), "clmul and fft paths disagree"
                dt, ym = timed(toeplitz_hash, x, sm, m, modified=True)
                tm.append(dt)
            assert np.array_equal(yb, yf), "baseline and toeplitz_hash disagree"
            ref_m = x[:m] ^ toeplitz_hash(x[m:], sm, m, backend="fft") if m < n else x[:m]
            assert np.array_equal(ym, ref_m), "modified Toeplitz disagrees with its definition"
            b, f, mo = (statistics.median(v) for v in (tb, tf, tm))
            if tc:
                c = statistics.median(tc)
                cols = (f"{c:>8.4f}", f"{n / c / 1e6:>11.1f}", f"{b / c:>11.1f}", f"{f / c:>10.1f}")
            else:
                cols = (f"{'-':>8}", f"{'-':>11}", f"{'-':>11}", f"{'-':>10}")
            print(f"{n:>10} {m:>10} {b:>8.3f} {f:>8.3f} {cols[0]} {mo:>8.4f} {n / b / 1e6:>10.2f} "
                  f"{n / f / 1e6:>9.2f} {cols[1]} {n / mo / 1e6:>11.1f} {b / f:>9.2f} {cols[2]} {cols[3]}")


def bench_verify(sizes: list[int], repeats: int) -> None:
    print("== Verification hash (poly over GF(2^61-1)), eps_cor = 1e-12 ==")
    rng = np.random.default_rng(7)
    for n in sizes:
        key = rng.integers(0, 2, n, dtype=np.uint8)
        vh = VerificationHash.new(n, 1e-12, rng)
        ts = [timed(vh.tag, key)[0] for _ in range(repeats)]
        t = statistics.median(ts)
        print(f"  n={n:>10}  t={vh.evaluations}  leak={vh.leak_bits} bits  {t * 1e3:8.2f} ms  "
              f"{n / t / 1e6:8.1f} Mbit/s")


def bench_auth(repeats: int) -> None:
    print("== Wegman-Carter tag + verify (t = 1 evaluation, 61 key bits per tag) ==")
    rng = np.random.default_rng(9)
    for size in (64, 1024, 65536, 1 << 20):
        count = max(5, min(2000, (1 << 24) // max(size, 1) // 16))
        psk = rng.bytes(16 + 8 * 2 * count * repeats)
        alice, bob = Authenticator(KeyPool(psk), "alice"), Authenticator(KeyPool(psk), "bob")
        msg = rng.bytes(size)
        tt, tv = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            tags = [alice.tag(msg, alice.next_send_seq) for _ in range(count)]
            t1 = time.perf_counter()
            for tag in tags:
                bob.verify(msg, bob.next_recv_seq, tag)
            t2 = time.perf_counter()
            tt.append((t1 - t0) / count)
            tv.append((t2 - t1) / count)
        a, v = statistics.median(tt), statistics.median(tv)
        print(f"  {size:>8} B  tag {a * 1e6:9.1f} us ({8 * size / a / 1e6:8.1f} Mbit/s)   "
              f"verify {v * 1e6:9.1f} us ({8 * size / v / 1e6:8.1f} Mbit/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-auth", action="store_true")
    ap.add_argument("--c-kernel", default="clmul", choices=["clmul", "vpclmulqdq-avx512", "pclmulqdq", "portable"],
                    help="C kernel for the clmul column (default: the fastest this CPU supports)")
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes]
    bench_toeplitz(sizes, args.ratios, args.repeats, args.c_kernel)
    if not args.skip_auth:
        bench_verify(sizes, args.repeats)
        bench_auth(args.repeats)


if __name__ == "__main__":
    main()
