"""Benchmark: sifted key bits per second through the whole distillation chain (two node processes on one host).

Baseline, measured in the same command: the physical layer alone (prep -> laser -> modulator -> fibre -> detector ->
null sink, same parameters, one process). Each configuration runs ``--runs`` times as ``qkdflow run ... --json``
(whole-process wall time, including start-up); medians are reported, with the chain/baseline wall-time ratio,
sifted bits/s, per-stage time per block (DU halves, from the key store's report: a block's latency from its arrival
in the stage, queueing and waits for the peer included), messages/round trips per block and the classical traffic
(``net_bytes_out`` of the stage halves) per sifted key bit. Capacity: the CPU
time of each distillation stage half's thread (``cpu_s``: the runtime runs a thread per block) per committed block,
summed per node: the node's distillation needs that much of one core per block, so with a core to itself it keeps
up with block_bits / (CPU per block) sifted bits/s, and the two nodes together with (sum of both) per block on one
core. CPU time counts what the stage computed, not the time it spent waiting for the GIL, the peer or a core the
simulation holds.

Frames: ``--slots-per-frame`` (default 10^6, the test flowgraph's; the main job runs 10^7). Every stage handles a
sync frame per click frame and sifting a chunk message each way, so the per-frame runtime cost is part of the
figure: with 10^7 the same chain needs less CPU per block.

    .venv/bin/python tools/bench_distill.py [--runs 3] [--slots 24e6] [--block-bits 50000] [--method cascade] [--psk F]
                                            [--slots-per-frame 1e6]
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

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "flowgraphs", "distill_test.yaml")
PHYS = ("prep", "laser", "mod", "fibre", "det")


def run(path: str, overrides: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "qkdflow.runtime.cli", "run", path, "--json"]
    for o in overrides:
        cmd += ["-p", o]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"run failed: {r.stderr[-2000:]}")
    return wall, json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--slots", type=float, default=24e6)
    ap.add_argument("--block-bits", type=int, default=50_000)
    ap.add_argument("--slots-per-frame", type=float, default=1e6, help="click frame size (main job: 1e7)")
    ap.add_argument("--method", default="cascade", choices=("cascade", "ldpc"))
    ap.add_argument("--psk", default=None, help="pre-shared key file: authenticate the classical channel (as the main "
                                                "job does; e.g. flowgraphs/demo-psk.bin)")
    a = ap.parse_args()
    doc = yaml.safe_load(open(BASE))
    doc["blocks"]["prep"]["total_slots"] = int(a.slots)
    doc["blocks"]["prep"]["slots_per_frame"] = int(a.slots_per_frame)
    doc["variables"]["block_bits"] = a.block_bits
    doc["variables"]["method"] = a.method
    tmp = tempfile.mkdtemp(prefix="bench_distill_")
    for side in ("a", "d"):
        doc["blocks"][f"store_{side}"]["store_path"] = os.path.join(tmp, f"store_{side}.sqlite")
    chain = os.path.join(tmp, "chain.yaml")
    with open(chain, "w") as f:
        yaml.safe_dump(doc, f)
    base = {"flowgraph": "phys-only", "clock": doc["clock"],
            "blocks": {**{k: {kk: vv for kk, vv in doc["blocks"][k].items() if kk != "node"} for k in PHYS},
                       "sink": {"type": "null_sink"}, "psink": {"type": "null_sink"}},
            "connections": [["prep.out", "laser.in"], ["laser.out", "mod.in"], ["mod.out", "fibre.in"],
                            ["fibre.out", "det.in"], ["det.out", "sink.in"], ["prep.out", "psink.in"]]}
    base["blocks"]["fibre"]["length_km"] = doc["variables"]["L"]
    phys = os.path.join(tmp, "phys.yaml")
    with open(phys, "w") as f:
        yaml.safe_dump(base, f)
    walls = {"physical layer": [], "whole chain": []}
    rep = None
    cpu: dict[str, list[float]] = {}    # "node:stage half" -> CPU seconds per block, per run
    for i in range(a.runs):  # interleaved, so load changes hit both alike
        walls["physical layer"].append(run(phys, [])[0])
        for side in ("a", "d"):
            p = os.path.join(tmp, f"store_{side}.sqlite")
            for ext in ("", "-wal", "-shm"):
                if os.path.exists(p + ext):
                    os.remove(p + ext)
        psk = [f"nodes.{n}.psk_file={os.path.abspath(a.psk)}" for n in ("aau", "du")] if a.psk else []
        w, s = run(chain, [f"nodes.aau.port={15810 + 40 * i}", f"nodes.du.port={15830 + 40 * i}", *psk])
        walls["whole chain"].append(w)
        rep = s["nodes"]["du"]["store_d"]
        nb = max(1, rep["blocks_committed"])
        net = {}   # bytes the distillation halves sent to the other node, by sending node
        for node, blocks in s["nodes"].items():
            for name, st in blocks.items():
                if isinstance(st, dict) and "busy_s" in st and "cpu_s" in st:    # the distillation stage halves
                    cpu.setdefault(f"{node}:{name}", []).append(st["cpu_s"] / nb)
                    net[node] = net.get(node, 0) + st.get("net_bytes_out", 0)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"slots {a.slots:.3g} in frames of {a.slots_per_frame:.3g}, block_bits {a.block_bits}, method {a.method}, "
          f"runs {a.runs} (medians), "
          f"classical channel {'authenticated' if a.psk else 'not authenticated'}")
    for k, v in walls.items():
        print(f"  {k:15s} wall {med[k]:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in v)})")
    print(f"  ratio chain / physical layer: {med['whole chain'] / med['physical layer']:.2f}")
    print(f"  sifted key bits {rep['sifted_bits']}, final {rep['final_key_bits']} in {rep['blocks_committed']} blocks;"
          f" {rep['sifted_bits'] / med['whole chain']:.3g} sifted bit/s, {rep['final_key_bits'] / med['whole chain']:.3g}"
          f" final bit/s (wall)")
    print("  per-block stage time (DU half, s):", json.dumps({k: round(v, 4) for k, v in rep["stage_s_per_block"].items()}))
    cmed = {k: statistics.median(v) for k, v in sorted(cpu.items())}
    print("  CPU time per block (s):", json.dumps({k: round(v, 4) for k, v in cmed.items()}))
    per_node: dict[str, float] = {}
    for k, v in cmed.items():
        per_node[k.split(":")[0]] = per_node.get(k.split(":")[0], 0.0) + v
    for node, tot in sorted(per_node.items()):
        print(f"  {node}: distillation CPU {tot:.3f} s per block -> one core keeps up with {a.block_bits / tot:.3g} "
              f"sifted bit/s")
    both = sum(per_node.values())
    print(f"  both nodes: {both:.3f} CPU-s per block -> two cores keep up with {2 * a.block_bits / both:.3g} sifted "
          f"bit/s (one node per core: {a.block_bits / max(per_node.values()):.3g})")
    sifted = max(1, rep["sifted_bits"])
    print(f"  classical traffic per sifted key bit (last run): {sum(net.values()) / sifted:.2f} bytes ("
          + ", ".join(f"from {n} {b / sifted:.2f}" for n, b in sorted(net.items())) + ")")
    print("  messages per block:", json.dumps(rep["messages_per_block"]))
    print("  round trips per block:", json.dumps(rep["round_trips_per_block"]))


if __name__ == "__main__":
    main()
