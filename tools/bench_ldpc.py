#!/usr/bin/env python3
"""Benchmark rate-adaptive LDPC reconciliation: efficiency f, FER, iterations, decode throughput.

One core: OMP/OPENBLAS/MKL/NUMBA threads are pinned to 1 before numpy is imported.
For each (n, QBER): frames of n - round(0.1 n) key bits with i.i.d. BSC(QBER) errors, Alice targets
f = --efficiency, Bob decodes (numba layered kernel if available, else numpy flooding; --numpy forces numpy).
f = leak / (key_bits * h(QBER)) with leak = m - p per frame (exact accounting, see ldpc.py).
Throughput = key bits / decode wall time (median over frames), also as "Mbit/s per n" in input symbols.
Baseline in the same command: Alice's encode (syndrome computation) throughput, reported as the ratio
decode/encode time.

Example:  python tools/bench_ldpc.py --frames 20 --n 10000 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402

from qkdflow.distill.ldpc import (  # noqa: E402
    LdpcAlice,
    LdpcBob,
    SyndromeMessage,
    _numba_available,
    binary_entropy,
    load_or_build_codes,
)

QBERS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.11)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10, help="frames per (n, QBER) point")
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="mother code lengths")
    ap.add_argument("--qber", type=float, nargs="+", default=list(QBERS))
    ap.add_argument("--efficiency", type=float, default=1.10, help="target f used to choose the rate")
    ap.add_argument("--delta", type=float, default=0.1, help="fraction d/n of punctured+shortened symbols")
    ap.add_argument("--max-iterations", type=int, default=200)
    ap.add_argument("--numpy", action="store_true", help="force the numpy decoder")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be >= 1")
    use_numba = (not args.numpy) and _numba_available()
    print(f"decoder: {'numba layered' if use_numba else 'numpy flooding'} sum-product, "
          f"max {args.max_iterations} iterations, target f = {args.efficiency}")
    print(f"{'n':>8} {'QBER':>6} {'R0':>5} {'p':>6} {'s':>6} {'f':>6} {'FER':>10} {'iter':>6} {'imax':>5} "
          f"{'dec Mb/s':>9} {'enc Mb/s':>9} {'dec/enc':>8}")
    rng = np.random.default_rng(args.seed)
    for n in args.n:
        t0 = time.perf_counter()
        codes = load_or_build_codes(n, args.seed)
        build_s = time.perf_counter() - t0
        print(f"# n={n}: code pool ready in {build_s:.1f} s (cache or build)", flush=True)
        alice = LdpcAlice(codes, seed=args.seed + 1, efficiency=args.efficiency, delta=args.delta)
        bob = LdpcBob(codes, max_iterations=args.max_iterations, use_numba=use_numba)
        if use_numba:  # compile outside the timed region
            a = rng.integers(0, 2, alice.frame_bits, dtype=np.uint8)
            bob.decode(a, alice.encode(a, 0.05))
        for q in args.qber:
            try:
                probe = alice.encode(np.zeros(alice.frame_bits, np.uint8), q)
            except ValueError as exc:
                print(f"{n:>8} {q:>6.3f}  skipped: {exc}")
                continue
            fails = 0
            iters, dec_t, enc_t = [], [], []
            for i in range(args.frames):
                a = rng.integers(0, 2, alice.frame_bits, dtype=np.uint8)
                b = a ^ (rng.random(a.size) < q).astype(np.uint8)
                t = time.perf_counter()
                wire = alice.encode(a, q, frame_id=i).to_bytes()
                enc_t.append(time.perf_counter() - t)
                msg = SyndromeMessage.from_bytes(wire)
                t = time.perf_counter()
                res = bob.decode(b, msg)
                dec_t.append(time.perf_counter() - t)
                iters.append(res.iterations)
                if not (res.converged and np.array_equal(res.corrected, a)):
                    fails += 1
            f = probe.leak_bits / (probe.key_bits * binary_entropy(q))
            kb = alice.frame_bits
            dec = kb / np.median(dec_t) / 1e6
            enc = kb / np.median(enc_t) / 1e6
            r0 = 1 - probe.m / probe.n
            fer = f"{fails}/{args.frames}"
            print(f"{n:>8} {q:>6.3f} {r0:>5.2f} {probe.punctured:>6} {probe.shortened:>6} {f:>6.3f} {fer:>10} "
                  f"{np.mean(iters):>6.1f} {max(iters):>5} {dec:>9.3f} {enc:>9.2f} "
                  f"{np.median(dec_t) / np.median(enc_t):>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
