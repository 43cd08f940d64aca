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

--mode blind (Martinez-Mateo et al. 2012, ``ldpc.BlindDecoder``): all frames of a point are one batch (as a key
block in reconcile_du); the first attempt at f = --blind-start, then rounds of reveals of --blind-step in f for
the frames that failed. f = mean over frames of (m - p0 + revealed) / (key_bits h(QBER)) (exact leak), "fmax" its
largest frame; FER counts frames that failed with every value revealed or converged to a wrong word (the others go on); "att" decoding attempts per
frame, "rounds" rounds of the batch (= Alice->Bob messages), "iter" BP iterations per frame summed over attempts;
throughput = key bits / wall time of every decoding attempt of every round (LLR setup included, messages not).
The QBER estimate given to Alice is the channel's QBER in both modes. --mode both prints one-shot then blind.

--family de: the mother codes of the density-evolution-optimised family (ldpc_codes.DE_DISTRIBUTIONS, designed by
qkdflow/distill/ldpc_design.py; rates 0.50-0.95) instead of Elkouss et al. 2009 (elkouss2009, rates 0.50-0.90).
--construction peg: the mother codes built by progressive edge growth (ldpc_codes.build_code_peg) instead of the
random socket matching (default: ldpc_codes.default_construction, PEG for the rows designed in family de,
random for the Elkouss rows); --decoder min-sum: the int16 self-corrected normalised/offset min-sum kernels (32 frames
per AVX-512BW pass) instead of float sum-product; --stall K gives a min-sum frame up after K iterations without a
new minimum of unsatisfied checks.

Example:  python tools/bench_ldpc.py --frames 32 --n 10000 100000 --mode both
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

from qkdflow.distill import ldpc, ldpc_codes  # noqa: E402
from qkdflow.distill.ldpc import (  # noqa: E402
    BlindDecoder,
    LdpcAlice,
    LdpcBob,
    RevealMessage,
    SyndromeMessage,
    binary_entropy,
    load_or_build_codes,
)

QBERS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.11)


def fer_upper95(fails: int, frames: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound on the frame error rate."""
    return 1.0 if fails >= frames else float(beta.ppf(0.95, fails + 1, frames - fails))


def run_oneshot(args, alice, bob, a, b, q):
    """One syndrome per frame at the rate for target f; one decode_many call for all frames."""
    msgs = [SyndromeMessage.from_bytes(alice.encode(a[i], q, frame_id=i).to_bytes()) for i in range(a.shape[0])]
    t = time.perf_counter()
    if args.single and ldpc._cldpc is not None and not args.numpy:
        res = [bob.decode(b[i], msgs[i]) for i in range(a.shape[0])]
    else:
        res = bob.decode_many(list(b), msgs)
    dec_s = time.perf_counter() - t
    iters = sum(r.iterations for r in res)
    return res, [r.leak_bits for r in res], 1 - msgs[0].m / msgs[0].n, len(res), 1, iters, dec_s, 0


def run_blind(args, alice, bob, a, b, q):
    """Blind rounds over the whole batch, every message through its byte codec; times the decode calls."""
    sent = [alice.encode_blind(a[i], q, frame_id=i) for i in range(a.shape[0])]
    msgs = [SyndromeMessage.from_bytes(m.to_bytes()) for m, _ in sent]
    dec = BlindDecoder(bob, list(b), msgs, args.round_iterations, warm_start=not args.cold,
                       round_stall=args.round_stall, reveal=args.reveal)
    dec_s = 0.0
    while True:
        t = time.perf_counter()
        failing = dec.decode()
        dec_s += time.perf_counter() - t
        if not failing:           # frames that failed with everything revealed are lost (counted in FER)
            break
        rs = [sent[i][1].answer(dec.requests.get(i)) for i in failing]
        dec.add_reveals([RevealMessage.from_bytes(r.to_bytes()) for r in rs])
    leaks = [m.leak_bits + t for m, t in zip(msgs, dec.revealed)]
    assert leaks == [fr.leak_bits for _, fr in sent]
    ext = sum(t > m.punctured for m, t in zip(msgs, dec.revealed))   # frames that needed extension bits
    return dec.results, leaks, 1 - msgs[0].m / msgs[0].n, dec.attempts, dec.rounds, dec.iterations, dec_s, ext


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
    ap.add_argument("--seed", type=int, default=1, help="seed of the frames (and of the codes, unless --code-seed)")
    ap.add_argument("--code-seed", type=int, default=None,
                    help="seed of the mother-code construction (default: --seed); new frames on the same codes")
    ap.add_argument("--mode", choices=("oneshot", "blind", "both"), default="both")
    ap.add_argument("--blind-start", type=float, default=ldpc.DEFAULT_BLIND_START)
    ap.add_argument("--blind-step", type=float, default=ldpc.DEFAULT_BLIND_STEP)
    ap.add_argument("--blind-max", type=float, default=ldpc.DEFAULT_BLIND_MAX)
    ap.add_argument("--blind-margin", type=float, default=None,
                    help="blind: the mother code reaches --blind-max for a frame this many sigmas above the QBER "
                         f"(default: {ldpc.BLIND_MARGIN_SIGMAS:g} below n = {ldpc.BLIND_LONG_N}, 0 from there on)")
    ap.add_argument("--round-iterations", type=int, default=ldpc.DEFAULT_ROUND_ITERATIONS)
    ap.add_argument("--cold", action="store_true", help="blind: restart every attempt from the channel LLRs")
    ap.add_argument("--family", choices=tuple(ldpc_codes.FAMILIES), default=ldpc.DEFAULT_CODE_FAMILY,
                    help="degree-distribution family of the mother codes")
    ap.add_argument("--construction", choices=ldpc_codes.CONSTRUCTIONS, default=None,
                    help="mother-code graph construction (default: per row, ldpc_codes.default_construction)")
    ap.add_argument("--rates", type=float, nargs="+", default=None,
                    help="mother-code rates of the pool (default: all of the family's)")
    ap.add_argument("--decoder", choices=ldpc.ALGORITHMS, default=ldpc.DEFAULT_ALGORITHM)
    ap.add_argument("--reveal", choices=ldpc.REVEAL_MODES, default=ldpc.DEFAULT_REVEAL,
                    help="blind: Alice discloses values where Bob is least sure (reliability) or in a fixed order")
    ap.add_argument("--round-stall", type=int, default=ldpc.DEFAULT_ROUND_STALL,
                    help="blind: an attempt with values left to reveal stops after this many stalled iterations")
    ap.add_argument("--stall", type=int, default=0, help="give a frame up after this many stalled iterations (0: off)")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be >= 1")
    if args.numpy:
        path = "numpy flooding (forced)"
    elif ldpc._cldpc is not None:
        simd = bool(ldpc._cldpc.HAVE_SIMD) and not args.single
        path = "C layered, " + ("16-frame AVX-512 batches" if simd else "scalar frame by frame")
        if args.decoder == "min-sum":
            simd = bool(ldpc._cldpc.HAVE_SIMD_MINSUM) and not args.single
            path = (f"C layered self-corrected min-sum (alpha {ldpc.MINSUM_ALPHA}, beta {ldpc.MINSUM_BETA}, int16), "
                    + ("32-frame AVX-512BW batches" if simd else "scalar frame by frame")
                    + (f", stall {args.stall}" if args.stall else ""))
    else:
        path = f"{ldpc.DECODER} (C extension not built or QKDFLOW_NO_CEXT=1)"
    print(f"decoder: {path}; {args.decoder}, max {args.max_iterations} iterations; codes: {args.family}, "
          f"{args.construction or 'default construction'}; "
          f"one-shot target f = "
          f"{args.efficiency}; blind start {args.blind_start} step {args.blind_step} max {args.blind_max}, "
          f"{args.round_iterations} iterations per attempt (stall {args.round_stall}), {args.reveal} reveals, "
          f"{'cold' if args.cold else 'warm'} restarts")
    print(f"{'mode':>7} {'n':>8} {'QBER':>6} {'R0':>5} {'f':>6} {'fmax':>6} {'fails':>9} {'FER95':>7} {'att':>5} "
          f"{'rounds':>6} {'iter':>6} {'dec Mb/s':>9} {'ext':>4}")
    rng = np.random.default_rng(args.seed)
    modes = ("oneshot", "blind") if args.mode == "both" else (args.mode,)
    for n in args.n:
        t0 = time.perf_counter()
        try:
            code_seed = args.seed if args.code_seed is None else args.code_seed
            codes = load_or_build_codes(n, code_seed, rates=args.rates, construction=args.construction,
                                        family=args.family)
        except ValueError as exc:
            ap.error(str(exc))
        print(f"# n={n}: code pool ready in {time.perf_counter() - t0:.1f} s (cache or build)", flush=True)
        alice = LdpcAlice(codes, seed=args.seed + 1, efficiency=args.efficiency, delta=args.delta,
                          blind_start=args.blind_start, blind_step=args.blind_step, blind_max=args.blind_max,
                          blind_margin_sigmas=args.blind_margin, blind_reveal=args.reveal)
        bob = LdpcBob(codes, max_iterations=args.max_iterations, use_numba=False if args.numpy else None,
                      algorithm=args.decoder, stall=args.stall)
        for q in args.qber:
            a = rng.integers(0, 2, (args.frames, alice.frame_bits), dtype=np.uint8)
            b = a ^ (rng.random(a.shape) < q).astype(np.uint8)
            bits = args.frames * alice.frame_bits
            h = binary_entropy(q)
            for mode in modes:
                try:
                    row = (run_oneshot if mode == "oneshot" else run_blind)(args, alice, bob, a, b, q)
                except ValueError as exc:
                    print(f"{mode:>7} {n:>8} {q:>6.3f}  skipped: {exc}", flush=True)
                    continue
                res, leaks, r0, attempts, rounds, iters, dec_s, ext = row
                fails = sum(not (r.converged and np.array_equal(r.corrected, a[i])) for i, r in enumerate(res))
                f = np.asarray(leaks, float) / (alice.frame_bits * h)
                print(f"{mode:>7} {n:>8} {q:>6.3f} {r0:>5.2f} {f.mean():>6.3f} {f.max():>6.3f} "
                      f"{f'{fails}/{args.frames}':>9} {fer_upper95(fails, args.frames):>7.4f} "
                      f"{attempts / args.frames:>5.2f} {rounds:>6} {iters / args.frames:>6.1f} "
                      f"{bits / dec_s / 1e6:>9.3f} {ext:>4}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
