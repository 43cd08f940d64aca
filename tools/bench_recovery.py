#!/usr/bin/env python3
"""Recovery after a killed node: kill -9 the AAU's or the DU's node process mid-run; time to the next key block.

Set-up (whole processes, as an operator runs them): the two-node key-distillation flowgraph
``flowgraphs/distill_test.yaml`` (10 km, 5e4-bit blocks, Cascade), with a pre-shared key (authenticated classical
channel), run as ``qkdflow run FG --node aau --restart N`` and ``qkdflow run FG --node du --restart N`` — two
supervisors, each starting its node as a child process and restarting it when it fails. Once both key stores hold
a committed block, the victim's node process gets SIGKILL. The victim's supervisor restarts it; the survivor's node
notices the lost peer (runtime.liveness), stops, and is restarted by its own supervisor; the two reconnect,
reconcile their key stores and go on.

Figures (per run; medians over --runs):
  detect_s    kill -> the survivor's node has stopped (its supervisor logs the failure)
  recovery_s  kill -> the next key block committed at both ends (the issue's "node restart to next delivered
              key block"; the victim is restarted by its supervisor after --restart-delay)
  baseline_s  time between two consecutive key blocks before the kill (same run): what a block costs anyway
Invariants checked after every run (stores read directly): every block the AAU committed is committed at the DU
with identical key bits; at most one DU block is missing at the AAU (the crash window), and it is not confirmed
(never delivered); no two blocks hold the same key bits; no pending block is left after a reopen.

Example:  python tools/bench_recovery.py --runs 3 --victim aau du
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSK = os.path.join(ROOT, "flowgraphs", "demo-psk.bin")


def free_base(n: int) -> int:
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
        s.close()
        if base + n > 65000:
            continue
        try:
            for p in range(base, base + n):
                t = socket.socket()
                t.bind(("127.0.0.1", p))
                t.close()
            return base
        except OSError:
            continue
    raise RuntimeError("no block of free ports")


def write_flowgraph(d: str, slots: float = 2e9) -> str:
    with open(os.path.join(ROOT, "flowgraphs", "distill_test.yaml")) as f:
        doc = yaml.safe_load(f)
    base = free_base(16)
    doc["flowgraph"] = "restart"
    doc["nodes"] = {"aau": {"host": "127.0.0.1", "port": base, "psk_file": PSK},
                    "du": {"host": "127.0.0.1", "port": base + 8, "psk_file": PSK}}
    doc["blocks"]["prep"]["total_slots"] = int(slots)
    doc["blocks"]["store_a"]["store_path"] = os.path.join(d, "keys_aau.sqlite")
    doc["blocks"]["store_d"]["store_path"] = os.path.join(d, "keys_du.sqlite")
    path = os.path.join(d, "restart.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def read_store(path: str) -> dict[str, tuple]:
    """{block_id: (state, key bytes, confirmed or None)} read without taking the store's locks."""
    if not os.path.exists(path):
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(blocks)")]
        conf = "confirmed" if "confirmed" in cols else "NULL"
        return {b: (s, bytes(k), c) for b, s, k, c in
                con.execute(f"SELECT block_id, state, key, {conf} FROM blocks")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def committed(path: str) -> set[str]:
    return {b for b, (s, _, _) in read_store(path).items() if s == "committed"}


def both_committed(d: str) -> set[str]:
    return committed(os.path.join(d, "keys_aau.sqlite")) & committed(os.path.join(d, "keys_du.sqlite"))


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def check_invariants(d: str) -> list[str]:
    """Problems with the two key stores (empty list: consistent)."""
    a = read_store(os.path.join(d, "keys_aau.sqlite"))
    u = read_store(os.path.join(d, "keys_du.sqlite"))
    ca = {b: v for b, v in a.items() if v[0] == "committed"}
    cu = {b: v for b, v in u.items() if v[0] == "committed"}
    bad = []
    for b, v in ca.items():
        if b not in cu:
            bad.append(f"block {b} committed at the AAU only")
        elif cu[b][1] != v[1]:
            bad.append(f"block {b}: different keys at the two ends")
    only_du = [b for b in cu if b not in ca]
    if len(only_du) > 1:
        bad.append(f"{len(only_du)} blocks committed at the DU only (at most the one in the crash window)")
    for b in only_du:
        if cu[b][2]:
            bad.append(f"block {b} is confirmed (deliverable) at the DU but absent at the AAU")
    keys = [v[1] for v in cu.values()]
    if len(set(keys)) != len(keys):
        bad.append("two key blocks hold the same key bits")
    return bad


def start_nodes(fg: str, d: str, env: dict | None, restarts: int, delay_s: float) -> tuple[dict, dict]:
    """``qkdflow run FG --node X --restart N`` for the DU and the AAU, logs in ``d/<node>.log``."""
    env = dict(env or os.environ)
    env.pop("QKDFLOW_RESTART", None)
    procs, logs = {}, {}
    for node in ("du", "aau"):
        logs[node] = open(os.path.join(d, f"{node}.log"), "wb")
        procs[node] = subprocess.Popen(
            [sys.executable, "-m", "qkdflow.runtime.cli", "run", fg, "--node", node, "--restart", str(restarts),
             "--restart-delay", str(delay_s), "-q"], cwd=d, env=env, stdout=logs[node], stderr=subprocess.STDOUT)
    return procs, logs


def stop_nodes(procs: dict, logs: dict) -> None:
    """Ctrl-C to both supervisors (they stop their nodes), then close the logs."""
    for p in procs.values():
        p.send_signal(signal.SIGINT)
    for p in procs.values():
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for f in logs.values():
        f.close()


def scenario(victim: str, d: str, restart_delay_s: float = 0.5, timeout_s: float = 90.0,
             env: dict | None = None) -> dict:
    """One kill -9 of ``victim`` ('aau' or 'du'); returns the figures (see the module docstring)."""
    fg = write_flowgraph(d)
    procs, logs = start_nodes(fg, d, env, restarts=5, delay_s=restart_delay_s)
    out: dict = {"victim": victim}
    try:
        t_end = time.monotonic() + timeout_s
        seen: list[tuple[float, int]] = []
        while time.monotonic() < t_end:  # two blocks before the kill: a baseline block time
            n = len(both_committed(d))
            if not seen or n > seen[-1][1]:
                seen.append((time.monotonic(), n))
            if n >= 2 and len(seen) >= 3:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("no key blocks before the kill")
        out["baseline_s"] = seen[-1][0] - seen[-2][0]
        before = both_committed(d)
        kids = children(procs[victim].pid)
        if not kids:
            raise RuntimeError(f"{victim}: no node process to kill")
        t_kill = time.monotonic()
        os.kill(kids[0], signal.SIGKILL)
        survivor = "du" if victim == "aau" else "aau"
        old_child = children(procs[survivor].pid)
        while time.monotonic() < t_end:
            if "detect_s" not in out and children(procs[survivor].pid) != old_child:
                out["detect_s"] = time.monotonic() - t_kill
            if both_committed(d) - before:
                out["recovery_s"] = time.monotonic() - t_kill
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("no key block after the restart")
        out["blocks_before"] = len(before)
    finally:
        stop_nodes(procs, logs)
    out["problems"] = check_invariants(d)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--victim", nargs="+", default=["aau", "du"], choices=["aau", "du"])
    ap.add_argument("--restart-delay", type=float, default=0.5)
    args = ap.parse_args(argv)
    print(f"{'victim':>6} {'detect s':>9} {'recovery s':>11} {'block s (baseline)':>19}  invariants")
    for victim in args.victim:
        rows = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as d:
                r = scenario(victim, d, args.restart_delay)
            rows.append(r)
            print(f"{victim:>6} {r.get('detect_s', float('nan')):>9.2f} {r['recovery_s']:>11.2f} "
                  f"{r['baseline_s']:>19.2f}  {'ok' if not r['problems'] else '; '.join(r['problems'])}", flush=True)
        med = lambda k: statistics.median(r.get(k, float("nan")) for r in rows)  # noqa: E731
        print(f"{victim:>6} median: detect {med('detect_s'):.2f} s, recovery {med('recovery_s'):.2f} s "
              f"(restart delay {args.restart_delay:g} s), block time before the kill {med('baseline_s'):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
