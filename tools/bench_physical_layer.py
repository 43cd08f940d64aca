#!/usr/bin/env python3
"""Benchmark: simulated pulse slots per CPU-second of the physical layer, one process, vs the runtime's floor.

Physics graph (1 GHz, 20 km fronthaul, realistic coexistence plan):
  preparation -> laser -> modulator -> wdm_mux -> fibre(20 km) -> wdm_demux -> detector -> null_sink
  quantum 1310 nm (O band) on a CWDM grid; uplink 1550 nm co-propagating and downlink 1570 nm counter-propagating,
  both 0 dBm launch; 110 dB non-adjacent isolation (a CWDM demux's 40 dB plus an extra O-band pass filter, as in
  coexistence experiments: the 40 dB datasheet value alone lets ~300 leaked photons per gate through at 0 dBm);
  mu = 0.5/0.1/0, InGaAs-like detector eta 0.2, p_dc 1e-6, ssmf loss curve (0.33 dB/km at 1310 nm).
Baseline graph: slot_source (uint8) -> copy x6 -> null_sink with the same frame size (the runtime's per-frame floor:
same number of frames and hops, no physics).
Each measurement is a fresh child process (python -c ... --child) timing only the run (not imports) with
resource.getrusage user+sys CPU and wall clock; the report is the median of --runs runs.

    .venv/bin/python tools/bench_physical_layer.py [--slots 1e9] [--frame 1e7] [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def physics_graph(slots: int, frame: int) -> dict:
    chain = ["prep", "laser", "mod", "mux", "fib", "demux", "det", "sink"]
    return {
        "flowgraph": "bench-physics", "clock": {"rate_hz": 1.0e9},
        "blocks": {
            "prep": {"type": "preparation", "seed": 7, "slots_per_frame": frame, "total_slots": slots,
                     "basis_bias": 0.9},
            "laser": {"type": "laser"},
            "mod": {"type": "modulator", "state_prep_error": 0.005},
            "mux": {"type": "wdm_mux", "quantum_wavelength_nm": 1310.0, "grid": "cwdm",
                    "nonadjacent_isolation_db": 110.0,
                    "classical_channels": [
                        {"name": "uplink", "wavelength_nm": 1550.0, "launch_power_dbm": 0.0, "direction": "co"},
                        {"name": "downlink", "wavelength_nm": 1570.0, "launch_power_dbm": 0.0,
                         "direction": "counter"}]},
            "fib": {"type": "fibre", "length_km": 20.0, "loss_db_per_km": "ssmf", "misalignment": 0.01},
            "demux": {"type": "wdm_demux"},
            "det": {"type": "detector", "efficiency": 0.2, "dark_count_per_gate": 1.0e-6, "jitter_ps": 30.0},
            "sink": {"type": "null_sink"},
        },
        "connections": [[f"{a}.out", f"{b}.in"] for a, b in zip(chain, chain[1:])],
    }


def baseline_graph(slots: int, frame: int) -> dict:
    chain = ["src"] + [f"c{i}" for i in range(6)] + ["sink"]
    blocks = {"src": {"type": "slot_source", "frames": slots // frame, "slots_per_frame": frame, "dtype": "uint8"},
              "sink": {"type": "null_sink"}}
    blocks.update({f"c{i}": {"type": "copy"} for i in range(6)})
    return {"flowgraph": "bench-floor", "blocks": blocks,
            "connections": [[f"{a}.out", f"{b}.in"] for a, b in zip(chain, chain[1:])]}


def child(path: str) -> None:
    import resource
    import time

    from qkdflow.runtime.graph import load_flowgraph
    from qkdflow.runtime.scheduler import NodeRunner

    g = load_flowgraph(path)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    res = NodeRunner(g, "main").run(timeout_s=3600)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if not res.ok:
        raise SystemExit(f"run failed: {res.failure}")
    slots = max(b["slots"] for b in res.blocks.values())
    clicks = res.blocks.get("det", {}).get("clicks")
    print(json.dumps({"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                      "slots": slots, "clicks": clicks}))


def measure(path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", path], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(HERE))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=float, default=1e9)
    ap.add_argument("--frame", type=float, default=1e7)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    slots, frame = int(a.slots), int(a.frame)
    tmp = tempfile.mkdtemp(prefix="qkdflow-bench-")
    paths = {}
    for name, doc in (("physics", physics_graph(slots, frame)), ("baseline", baseline_graph(slots, frame))):
        paths[name] = os.path.join(tmp, f"{name}.yaml")
        with open(paths[name], "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
    runs: dict[str, list[dict]] = {"physics": [], "baseline": []}
    for _ in range(a.runs):  # interleaved so both see the same machine load
        for name in runs:
            runs[name].append(measure(paths[name]))
    print(f"slots per run {slots:.3g}, frame {frame:.3g} slots, {a.runs} runs each (median)")
    med = {}
    for name, rs in runs.items():
        cpu = statistics.median(r["user_s"] + r["sys_s"] for r in rs)
        user = statistics.median(r["user_s"] for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs)
        med[name] = cpu
        extra = f", clicks {rs[0]['clicks']}" if rs[0].get("clicks") is not None else ""
        print(f"  {name:9s} wall {wall:7.3f} s  user {user:7.3f} s  user+sys {cpu:7.3f} s  "
              f"-> {slots / user:.3g} slots/user-CPU-s, {slots / cpu:.3g} slots/CPU-s{extra}")
    print(f"  physics / baseline CPU ratio: {med['physics'] / med['baseline']:.2f}")


if __name__ == "__main__":
    main()
