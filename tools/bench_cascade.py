#!/usr/bin/env python3
"""Benchmark Cascade reconciliation (qkdflow.distill.cascade): efficiency, FER, round trips, throughput.

Every frame runs both halves in this one process (Alice answers, Bob drives; by default every message is
serialised with to_bytes/from_bytes), pinned to one CPU with BLAS/OpenMP threads set to 1. Throughput is
input bits per second of wall time per frame (median over the frames of a cell). Baselines measured in
the same command: a plain numpy pass over the same frame (XOR of the two keys + popcount, i.e. the cost of
merely touching the data) and, when "original" is among the variants, the Brassard-Salvail variant's
throughput at the same (n, Q) ("x_orig" column). Efficiency f = leak / (n h(e/n)) with e the frame's
actual error count; FER = frames with any residual difference / frames run.

Examples:
  .venv/bin/python tools/bench_cascade.py                       # default: a few minutes
  .venv/bin/python tools/bench_cascade.py --variants hybrid --sizes 1e4 --frames 3000   # FER <= 1e-3 check
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from qkdflow.distill.cascade import VARIANTS, reconcile  # noqa: E402


def _frame(n: int, qber: float, index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([2024, n, int(qber * 1e6), index])
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (rng.random(n) < qber).astype(np.uint8)


def _xor_pass_seconds(alice: np.ndarray, bob: np.ndarray, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        int(np.count_nonzero(np.bitwise_xor(alice, bob)))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="hybrid,biconf,original",
                    help=f"comma list from {sorted(VARIANTS)} (default: hybrid,biconf,original)")
    ap.add_argument("--qbers", default="0.5,1,2,3,5,8,11", help="QBER values in percent")
    ap.add_argument("--sizes", default="1e4,1e5,1e6", help="frame sizes n (bits)")
    ap.add_argument("--frames", type=int, default=20,
                    help="frames per cell at n=1e4; larger n get frames*1e4/n (at least --min-frames)")
    ap.add_argument("--min-frames", type=int, default=2)
    ap.add_argument("--no-wire", action="store_true", help="skip to_bytes/from_bytes of every message")
    ap.add_argument("--pin", action="store_true", help="pin the process to one CPU (the last allowed one)")
    ap.add_argument("--same-seed", action="store_true",
                    help="one permutation seed for every frame, as reconcile_du uses one per run (Cascade's "
                         "permutations then come from its cache after the first frame; default: seed = frame index)")
    args = ap.parse_args()

    if args.pin and hasattr(os, "sched_setaffinity"):
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"--variants: unknown {v!r}; choose from {sorted(VARIANTS)}")
    qbers = [float(q) / 100 for q in args.qbers.split(",")]
    sizes = [int(float(s)) for s in args.sizes.split(",")]

    print(f"# numpy {np.__version__}; wire={'no' if args.no_wire else 'yes'}; seeds "
          f"{'one for all frames' if args.same_seed else 'one per frame'}; single thread; Mbit/s = input bits"
          f" per second per frame (median), wall clock and CPU time of this process")
    print(f"{'variant':9s} {'n':>8s} {'Q%':>5s} {'frames':>6s} {'f_mean':>7s} {'f_sd':>6s} {'FER':>9s} "
          f"{'rounds':>7s} {'msgs':>6s} {'wireKB':>7s} {'Mb/s':>6s} {'cpuMb/s':>7s} {'xorMb/s':>7s} {'x_orig':>6s}")
    t_start = time.perf_counter()
    for n in sizes:
        frames = max(args.min_frames, round(args.frames * 1e4 / n))
        for q in qbers:
            keys = [_frame(n, q, i) for i in range(frames)]
            xor_rate = n / _xor_pass_seconds(*keys[0]) / 1e6
            rates: dict[str, float] = {}
            rows = []
            for v in variants:
                fs, rounds, msgs, wire, times, cpu, fails = [], [], [], [], [], [], 0
                for i, (alice, bob) in enumerate(keys):
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = reconcile(alice, bob, q, v, seed=0 if args.same_seed else i, wire=not args.no_wire)
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                    fails += res.frame_error
                    if res.errors_before:
                        fs.append(res.efficiency)
                    rounds.append(res.rounds)
                    msgs.append(res.messages)
                    wire.append((res.request_bytes + res.reply_bytes) / 1024)
                rates[v] = n / float(np.median(times)) / 1e6
                rows.append((v, fs, fails, rounds, msgs, wire, n / max(float(np.median(cpu)), 1e-9) / 1e6))
            for v, fs, fails, rounds, msgs, wire, cpu_rate in rows:
                ratio = f"{rates[v] / rates['original']:6.2f}" if "original" in rates else f"{'-':>6s}"
                print(f"{v:9s} {n:8d} {q * 100:5.1f} {frames:6d} {np.mean(fs):7.4f} {np.std(fs):6.4f} "
                      f"{fails:>4d}/{frames:<4d} {np.mean(rounds):7.1f} {np.mean(msgs):6.0f} {np.mean(wire):7.1f} "
                      f"{rates[v]:6.2f} {cpu_rate:7.2f} {xor_rate:7.0f} {ratio}", flush=True)
    print(f"# total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
