"""Benchmark time-tag reading and slot assignment (one core, whole-process timing, medians).

Usage::

    .venv/bin/python tools/bench_timetag.py [--tags 10000000] [--runs 5] [--dir /tmp]

Each measurement runs in a fresh subprocess (so page cache is warm but the allocator is cold, as in a real
run) and is repeated ``--runs`` times; the median is reported. Baseline for the readers: ``np.fromfile`` of
the same file's bytes in the same subprocess setup, so ``ratio = reader time / fromfile time`` isolates the
decoding cost from disk/page-cache speed. Slot assignment is timed in-process on synthetic tags (1 GHz clock,
50 ps RMS jitter, 1 ppm frequency offset, sync every 1000 slots with 10 % of sync events missing) and the
wrong-slot fraction is measured against the known truth.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import sys, time, json, os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
kind, path, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind in ("ptu", "raw"):
    from qkdflow.timetag import PtuReader, RawTagReader
t0 = time.perf_counter()  # in-process time excludes interpreter start and imports (whole-process includes them)
n = 0
if kind == "fromfile":
    n = np.fromfile(path, np.uint8).size
elif kind == "fromfile_chunked":
    with open(path, "rb") as fh:
        while True:
            b = np.fromfile(fh, np.uint8, chunk * 4)
            if b.size == 0:
                break
            n += b.size
else:
    r = PtuReader(path, chunk_records=chunk) if kind == "ptu" else RawTagReader(path, chunk_records=chunk)
    for tags in r:
        n += tags.size
dt = time.perf_counter() - t0
print(json.dumps({"n": int(n), "s": dt}))
"""


def _run_child(kind: str, path: str, chunk: int, env: dict[str, str] | None = None) -> tuple[int, float, float]:
    """(items, whole-process wall time incl. interpreter start and imports, in-process read time)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, kind, path, str(chunk)], capture_output=True, text=True,
                         check=True, env=env)
    wall = time.perf_counter() - t0
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return d["n"], wall, d["s"]


def _median_child(kind: str, path: str, chunk: int, runs: int,
                  env: dict[str, str] | None = None) -> tuple[int, float, float]:
    res = [_run_child(kind, path, chunk, env) for _ in range(runs)]
    return res[0][0], statistics.median(r[1] for r in res), statistics.median(r[2] for r in res)


def make_files(n_tags: int, directory: str) -> tuple[str, str]:
    from qkdflow.timetag import make_tags, write_ptu, write_raw_tags

    rng = np.random.default_rng(7)
    # 4 detectors at ~10 Mcps total plus a 1 MHz sync: gaps exponential, 1 ps resolution
    t = np.cumsum(rng.exponential(1e12 / 11e6, n_tags)).astype(np.int64)
    ch = np.where(rng.random(n_tags) < 1 / 11, 0, rng.integers(1, 5, n_tags))
    tags = make_tags(t, ch)
    ptu_path = os.path.join(directory, "bench_hh2_t2.ptu")
    raw_path = os.path.join(directory, "bench.qtag")
    write_ptu(ptu_path, tags)
    write_raw_tags(raw_path, tags)
    return ptu_path, raw_path


def bench_slots(n_det: int, seed: int = 1) -> dict[str, float]:
    from qkdflow.timetag import ChannelMap, assign_slots, clock_from_sync, make_tags

    rng = np.random.default_rng(seed)
    period, ppm, jitter = 1000.0, 1.0, 50.0
    slots = np.cumsum(rng.geometric(1e-3, n_det)).astype(np.int64)
    ch = rng.integers(1, 5, n_det)
    tdet = np.rint(slots * period * (1 + ppm * 1e-6) + rng.normal(0, jitter, n_det)).astype(np.int64)
    ks = np.arange(0, slots[-1] + 1000, 1000)
    ks = ks[rng.random(ks.size) > 0.1]
    tsync = np.rint(ks * period * (1 + ppm * 1e-6) + rng.normal(0, jitter, ks.size)).astype(np.int64)
    t = np.concatenate([tdet, tsync])
    c = np.concatenate([ch, np.zeros(ks.size, np.int64)])
    order = np.argsort(t, kind="stable")
    tags = make_tags(t[order], c[order])
    cmap = ChannelMap({1: (0, 0), 2: (0, 1), 3: (1, 0), 4: (1, 1)}, sync_channel=0)
    times_fit, times_assign = [], []
    wrong = -1
    for _ in range(3):
        t0 = time.perf_counter()
        clk = clock_from_sync(tags["time_ps"][tags["channel"] == 0], period, 1000, first_sync_slot=int(ks[0]))
        t1 = time.perf_counter()
        clicks, stats = assign_slots(tags, clk, cmap)
        t2 = time.perf_counter()
        times_fit.append(t1 - t0)
        times_assign.append(t2 - t1)
        wrong = int(np.count_nonzero(clicks["slot"] != slots)) if clicks.size == slots.size else -1
    from qkdflow.timetag import StreamingSlotAssigner

    times_stream = []
    wrong_stream = -1
    for _ in range(3):
        t0 = time.perf_counter()
        sa = StreamingSlotAssigner(cmap, period, 1000, first_sync_slot=int(ks[0]))
        parts = [sa.push(tags[i:i + (1 << 18)]) for i in range(0, tags.size, 1 << 18)] + [sa.finish()]
        times_stream.append(time.perf_counter() - t0)
        got = np.concatenate(parts)["slot"]
        wrong_stream = int(np.count_nonzero(got != slots)) if got.size == slots.size else -1
    return {
        "streaming_s": statistics.median(times_stream),
        "streaming_tags_per_s": tags.size / statistics.median(times_stream),
        "streaming_wrong_slots": wrong_stream,
        "n_detections": n_det, "n_tags": int(tags.size),
        "clock_fit_s": statistics.median(times_fit),
        "assign_s": statistics.median(times_assign),
        "assign_tags_per_s": tags.size / statistics.median(times_assign),
        "wrong_slots": wrong, "wrong_fraction": wrong / n_det if wrong >= 0 else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=1 << 18)
    ap.add_argument("--slot-detections", type=int, default=2_000_000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        ptu_path, raw_path = make_files(args.tags, d)
        env_tuned = dict(os.environ, MALLOC_TRIM_THRESHOLD_="1073741824", MALLOC_MMAP_THRESHOLD_="1073741824")
        results = {}
        for label, kind, path in [("ptu_hh2_t2", "ptu", ptu_path), ("raw", "raw", raw_path)]:
            _, wall_base, in_base = _median_child("fromfile", path, args.chunk, args.runs)
            n, wall, inproc = _median_child(kind, path, args.chunk, args.runs)
            _, wall2, inproc2 = _median_child(kind, path, args.chunk, args.runs, env_tuned)
            results[label] = {
                "file_MB": round(os.path.getsize(path) / 1e6, 1), "tags": n,
                "whole_process_s": {"fromfile_baseline": wall_base, "reader": wall, "ratio": wall / wall_base},
                "whole_process_tags_per_s": n / wall,
                "in_process_s": {"fromfile_baseline": in_base, "reader": inproc, "ratio": inproc / in_base},
                "in_process_tags_per_s": n / inproc,
                "in_process_tags_per_s_malloc_no_trim": n / inproc2,
            }
        results["slots"] = bench_slots(args.slot_detections)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
