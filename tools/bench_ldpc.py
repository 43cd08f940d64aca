#!/usr/bin/env python3
"""Benchmark rate-adaptive LDPC reconciliation: efficiency f, FER (with a 95 % upper bound), decode throughput.

One core: OMP/OPENBLAS/MKL/NUMBA threads are pinned to 1 before numpy is imported.
For each (n, QBER): frames of n - round(0.1 n) key bits with i.i.d. BSC(QBER) errors, Alice targets
f = --efficiency, Bob decodes. Decoder: the C extension (default; ``LdpcBob.decode_many``, 16-frame AVX-512
kernel where available, --single for the scalar frame-by-frame C kernel), else numba/numpy (--numpy forces numpy).
f = leak / (key_bits * h(QBER)) with leak = m - p per frame (exact accounting, see ldpc.py).
FER = frames not converged or converged to a word != Alice's; "FER95" is the one-sided 95 % Clopper-Pearson
upper bound (0 failures in N frames -> 1 - 0.05^(1/N) ~ 3/N).
Throughput = key bits / decode wall time, all frames of the point decoded in one call (includes LLR setup).
Baseline in the same command: Alice's encode (syndrome) throughput.

Example:  python tools/bench_ldpc.py --frames 32 --n 10000 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402
from scipy.stats import beta  # noqa: E402

from qkdflow.distill import ldpc  # noqa: E402
from qkdflow.distill.ldpc import (  # noqa: E402
    LdpcAlice,
    LdpcBob,
    SyndromeMessage,
    binary_entropy,
    load_or_build_codes,
)

QBERS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.11)


def fer_upper95(fails: int, frames: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound on the frame error rate."""
    return 1.0 if fails >= frames else float(beta.ppf(0.95, fails + 1, frames - fails))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16, help="frames per (n, QBER) point")
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="mother code lengths")
    ap.add_argument("--qber", type=float, nargs="+", default=list(QBERS))
    ap.add_argument("--efficiency", type=float, default=1.10, help="target f used to choose the rate")
    ap.add_argument("--delta", type=float, default=0.1, help="fraction d/n of punctured+shortened symbols")
    ap.add_argument("--max-iterations", type=int, default=200)
    ap.add_argument("--numpy", action="store_true", help="force the numpy decoder")
    ap.add_argument("--single", action="store_true", help="C: scalar frame-by-frame kernel (no SIMD batch)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be >= 1")
    if args.numpy:
        path = "numpy flooding (forced)"
    elif ldpc._cldpc is not None:
        simd = bool(ldpc._cldpc.HAVE_SIMD) and not args.single
        path = "C layered, " + ("16-frame AVX-512 batches" if simd else "scalar frame by frame")
    else:
        path = f"{ldpc.DECODER} (C extension not built or QKDFLOW_NO_CEXT=1)"
    print(f"decoder: {path}; sum-product, max {args.max_iterations} iterations, target f = {args.efficiency}")
    print(f"{'n':>8} {'QBER':>6} {'R0':>5} {'p':>6} {'s':>6} {'f':>6} {'fails':>9} {'FER95':>8} {'iter':>6} "
          f"{'imax':>5} {'dec Mb/s':>9} {'enc Mb/s':>9}")
    rng = np.random.default_rng(args.seed)
    for n in args.n:
        t0 = time.perf_counter()
        codes = load_or_build_codes(n, args.seed)
        print(f"# n={n}: code pool ready in {time.perf_counter() - t0:.1f} s (cache or build)", flush=True)
        alice = LdpcAlice(codes, seed=args.seed + 1, efficiency=args.efficiency, delta=args.delta)
        bob = LdpcBob(codes, max_iterations=args.max_iterations, use_numba=False if args.numpy else None)
        for q in args.qber:
            try:
                probe = alice.encode(np.zeros(alice.frame_bits, np.uint8), q)
            except ValueError as exc:
                print(f"{n:>8} {q:>6.3f}  skipped: {exc}")
                continue
            a = rng.integers(0, 2, (args.frames, alice.frame_bits), dtype=np.uint8)
            b = a ^ (rng.random(a.shape) < q).astype(np.uint8)
            t = time.perf_counter()
            msgs = [SyndromeMessage.from_bytes(alice.encode(a[i], q, frame_id=i).to_bytes())
                    for i in range(args.frames)]
            enc_s = time.perf_counter() - t
            t = time.perf_counter()
            if args.single and ldpc._cldpc is not None and not args.numpy:
                res = [bob.decode(b[i], msgs[i]) for i in range(args.frames)]
            else:
                res = bob.decode_many(list(b), msgs)
            dec_s = time.perf_counter() - t
            fails = sum(not (r.converged and np.array_equal(r.corrected, a[i])) for i, r in enumerate(res))
            iters = [r.iterations for r in res]
            f = probe.leak_bits / (probe.key_bits * binary_entropy(q))
            bits = args.frames * alice.frame_bits
            r0 = 1 - probe.m / probe.n
            print(f"{n:>8} {q:>6.3f} {r0:>5.2f} {probe.punctured:>6} {probe.shortened:>6} {f:>6.3f} "
                  f"{f'{fails}/{args.frames}':>9} {fer_upper95(fails, args.frames):>8.3f} {np.mean(iters):>6.1f} "
                  f"{max(iters):>5} {bits / dec_s / 1e6:>9.3f} {bits / enc_s / 1e6:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
