#!/usr/bin/env python3
"""Micro-benchmark of the C sum-product kernel alone (qkdflow.distill._ldpc.decode_many), optionally against
another build of the extension loaded side by side (--old PATH.so), on the frames tools/bench_ldpc.py decodes.

For each QBER the frames are made as in tools/bench_ldpc.py --mode oneshot (same seed, key bits with i.i.d.
BSC(QBER) errors, Alice's rate for target f = --efficiency); the decode_many call LdpcBob makes is captured
(check_ptr, edge_var, LLRs, syndromes) and replayed --reps times per build, builds interleaved, and the median
wall time reported as key bits / s. With --old the outputs (words, iterations, converged flags) of the two builds
are compared ("same" = bit-identical) and "speedup" is the median over repetitions of the ratio old / new of
back-to-back runs (robust against the machine's load changing between repetitions). --state also replays the call with a zero message state (the blind-mode
path that writes back messages) and compares the written states.

Example:  python tools/bench_ldpc_kernel.py --old /tmp/ldpc_old/_ldpc.cpython-311-x86_64-linux-gnu.so \\
              --qber 0.02 0.05 0.08 0.11 --reps 5
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402

from qkdflow.distill import ldpc  # noqa: E402
from qkdflow.distill.ldpc import LdpcAlice, LdpcBob, SyndromeMessage, load_or_build_codes  # noqa: E402


def load_build(path: str, tag: str):
    """Import another build of the extension (its init symbol is PyInit__ldpc, so the last name part is _ldpc)."""
    spec = importlib.util.spec_from_file_location(f"{tag}._ldpc", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Capture:
    """Stands in for the extension module inside ldpc and records the decode_many arguments."""

    def __init__(self, real):
        self._real, self.calls = real, []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def decode_many(self, *args):
        self.calls.append(tuple(np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args[:5]))
        return self._real.decode_many(*args)


def run(mod, call: tuple, kernel: int, state: bool) -> tuple[float, tuple]:
    """One decode_many call of build `mod` on a captured call: (wall seconds, (words, iterations, ok, state))."""
    ptr, ev, llr, syn, max_iter = call
    F = llr.shape[0]
    n = llr.shape[1]
    words = np.empty((F, n), np.uint8)
    iters = np.zeros(F, np.int64)
    ok = np.zeros(F, np.uint8)
    st = np.zeros((F, ev.size), np.float32) if state else None
    t = time.perf_counter()
    mod.decode_many(ptr, ev, llr, syn, max_iter, words, iters, ok, True, st, False, kernel)
    return time.perf_counter() - t, (words, iters, ok, st)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--qber", type=float, nargs="+", default=[0.02, 0.05, 0.08, 0.11])
    ap.add_argument("--efficiency", type=float, default=1.10)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--max-iterations", type=int, default=200)
    ap.add_argument("--family", default="de")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kernel", type=int, default=0, help="decode_many kernel argument (0 = default)")
    ap.add_argument("--old", default=None, help="path of another _ldpc build to compare with")
    ap.add_argument("--state", action="store_true", help="also pass a message state (written back)")
    args = ap.parse_args(argv)
    new = ldpc._cldpc
    if new is None:
        ap.error("the C extension is not built")
    old = load_build(args.old, "ldpc_old_build") if args.old else None
    codes = load_or_build_codes(args.n, args.seed, family=args.family)
    alice = LdpcAlice(codes, seed=args.seed + 1, efficiency=args.efficiency, delta=args.delta)
    bob = LdpcBob(codes, max_iterations=args.max_iterations)
    rng = np.random.default_rng(args.seed)
    cap = _Capture(new)
    print(f"{'QBER':>6} {'m':>7} {'E':>8} {'iter':>6} {'new Mb/s':>9}" + (f" {'old Mb/s':>9} {'speedup':>8} same" if old else ""))
    for q in args.qber:
        a = rng.integers(0, 2, (args.frames, alice.frame_bits), dtype=np.uint8)
        b = a ^ (rng.random(a.shape) < q).astype(np.uint8)
        msgs = [SyndromeMessage.from_bytes(alice.encode(a[i], q, frame_id=i).to_bytes()) for i in range(args.frames)]
        cap.calls.clear()
        ldpc._cldpc = cap
        try:
            bob.decode_many(list(b), msgs)
        finally:
            ldpc._cldpc = new
        bits = args.frames * alice.frame_bits
        for call in cap.calls:
            t_new, t_old = [], []
            r_new = r_old = None
            for _ in range(args.reps):
                dt, r_new = run(new, call, args.kernel, args.state)
                t_new.append(dt)
                if old is not None:
                    dt, r_old = run(old, call, args.kernel, args.state)
                    t_old.append(dt)
            line = (f"{q:>6.3f} {call[0].size - 1:>7} {call[1].size:>8} {r_new[1].mean():>6.1f} "
                    f"{bits / np.median(t_new) / 1e6:>9.3f}")
            if old is not None:
                same = all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(r_new, r_old))
                ratio = np.median(np.asarray(t_old) / np.asarray(t_new))
                line += (f" {bits / np.median(t_old) / 1e6:>9.3f} {ratio:>8.2f} "
                         f"{'yes' if same else 'NO'}")
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
