#!/usr/bin/env python3
"""Runtime benchmarks (issue: runtime figures). Whole-process timing, median of --runs runs.

1. Throughput of 1 MiB frames between two node processes (ipc and tcp loopback), as a ratio to a
   bare pyzmq PUSH/PULL pair of processes moving the same bytes, measured in the same command: whole
   process (includes starting three Python processes against two) and steady state (the receiving side's
   time from its start to its last frame: the sink block's run_s, the bare receiver's loop); and the fixed cost
   (whole process, one frame), where start-up and shutdown show alone. Both sides get the same environment.
2. Per-frame runtime overhead: small frames through an in-process chain of 5 copy blocks, minus
   the same graph with no copy block, per frame per block (µs), for each scheduler (threads, single).
3. Peak RSS of a node whose sink is 10x slower than its source, for a short and a 10x longer run
   (flat memory: the two peaks are equal within noise).

    python tools/bench_runtime.py [--runs 5] [--mib 2048]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

PY = sys.executable


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


BARE = textwrap.dedent("""
    import sys, zmq, numpy as np
    role, addr, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ctx = zmq.Context()
    if role == "rx":
        import time
        s = ctx.socket(zmq.PULL); s.setsockopt(zmq.RCVHWM, 4); s.bind(addr)
        t0 = time.perf_counter()
        for _ in range(n):
            s.recv(copy=False)
        print(time.perf_counter() - t0)  # steady state: bind to last message
        s.close()
    else:
        s = ctx.socket(zmq.PUSH); s.setsockopt(zmq.SNDHWM, 4); s.connect(addr)
        buf = np.zeros(size, np.uint8)
        for _ in range(n):
            s.send(buf, copy=False)
        s.close(linger=-1)
    ctx.term()
""")


def timed(cmds: list[list[str]], env=None, keep: list | None = None) -> float:
    """Whole-process wall time of commands run together; their stdout is appended to ``keep``."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    for p in procs:
        if p.returncode != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(p.args)}")
    if keep is not None:
        keep.extend(outs)
    return time.perf_counter() - t0


def bare_pair(addr: str, n: int, size: int, steady: list, env=None) -> float:
    outs: list = []
    t = timed([[PY, "-c", BARE, "rx", addr, str(n), str(size)], [PY, "-c", BARE, "tx", addr, str(n), str(size)]],
              env, keep=outs)
    steady.append(float(outs[0].split()[-1]))
    return t


def flowgraph(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def qkdflow(args: list[str]) -> list[str]:
    return [PY, "-m", "qkdflow.runtime.cli", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=8192, help="MiB moved per throughput run")
    ap.add_argument("--small-frames", type=int, default=20000)
    ap.add_argument("--only", choices=("throughput", "overhead", "rss", "stop"), help="run one part")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    tmp = tempfile.mkdtemp(prefix="qkdflow-bench-")
    n, size = args.mib, 1 << 20
    results: dict = {"runs": args.runs}

    # 1. two node processes, 1 MiB frames
    for transport in ("ipc", "tcp") if args.only in (None, "throughput") else ():
        bare, ours, bare_steady, ours_steady, bare_one, ours_one = [], [], [], [], [], []
        for _ in range(args.runs):
            if transport == "tcp":
                addr, node = f"tcp://127.0.0.1:{free_port()}", f"{{port: {free_port()}}}"
            else:
                addr, node = f"ipc://{tmp}/bare", f"{{transport: ipc, ipc_dir: {tmp}}}"
            bare.append(bare_pair(addr, n, size, bare_steady, env))
            for frames in (n, 1):
                fg = flowgraph(f"{tmp}/two.yaml", f"""\
                    flowgraph: bench2
                    nodes: {{aau: {{}}, du: {node}}}
                    blocks:
                      src: {{type: slot_source, node: aau, frames: {frames}, slots_per_frame: {size}, dtype: uint8, pattern: zeros}}
                      sink: {{type: null_sink, node: du}}
                    connections: [[src.out, sink.in]]
                    """)
                outs: list = []
                t = timed([qkdflow(["run", fg, "-q", "--json"])], env, keep=outs)
                if frames == 1:
                    ours_one.append(t)
                    continue
                ours.append(t)
                ours_steady.append(json.loads(outs[0].strip().splitlines()[-1])["nodes"]["du"]["sink"]["run_s"])
            bare_one.append(bare_pair(addr, 1, size, [], env))
        mb = n * size / 1e6
        b, o = statistics.median(bare), statistics.median(ours)
        bs, os_ = statistics.median(bare_steady), statistics.median(ours_steady)
        results[f"two_process_{transport}"] = {
            "whole_process": {"bare_MBps": round(mb / b), "qkdflow_MBps": round(mb / o), "ratio": round(b / o, 3)},
            "steady_state": {"bare_MBps": round(mb / bs), "qkdflow_MBps": round(mb / os_),
                             "ratio": round(bs / os_, 3)},
            "one_frame_s": {"bare": round(statistics.median(bare_one), 3),
                            "qkdflow": round(statistics.median(ours_one), 3)}}

    # 2. per-frame overhead, 5 copy blocks vs none
    def chain(k: int, scheduler: str) -> str:
        names = ["src"] + [f"c{i}" for i in range(k)] + ["sink"]
        blocks = "\n".join(f"  c{i}: {{type: copy}}" for i in range(k))
        conns = "\n".join(f"  - [{a}.out, {b}.in]" for a, b in zip(names, names[1:]))
        return flowgraph(f"{tmp}/chain{k}-{scheduler}.yaml",
                         f"nodes: {{main: {{scheduler: {scheduler}}}}}\n"
                         f"blocks:\n  src: {{type: slot_source, frames: {args.small_frames}, slots_per_frame: 64,"
                         f" pattern: zeros}}\n{blocks}\n  sink: {{type: null_sink}}\nconnections:\n{conns}\n")
    if args.only in (None, "overhead"):
        for sched in ("threads", "single"):  # the two schedulers, each against its own empty chain
            t0 = statistics.median(timed([qkdflow(["run", chain(0, sched), "-q"])], env) for _ in range(args.runs))
            t5 = statistics.median(timed([qkdflow(["run", chain(5, sched), "-q"])], env) for _ in range(args.runs))
            results[f"per_frame_per_block_us_{sched}"] = round((t5 - t0) / (args.small_frames * 5) * 1e6, 2)
            results[f"chain0_s_{sched}"], results[f"chain5_s_{sched}"] = round(t0, 3), round(t5, 3)

    # 3. peak RSS with a sink 10x slower than its source (1 MiB frames)
    def rss(frames: int) -> float:
        fg = flowgraph(f"{tmp}/slow{frames}.yaml", f"""\
            blocks:
              src: {{type: slot_source, frames: {frames}, slots_per_frame: {size}, dtype: uint8}}
              sink: {{type: null_sink, delay_s: 0.01}}
            connections: [[src.out, sink.in]]
            """)
        code = ("import resource,subprocess,sys;subprocess.run(sys.argv[1:],check=True);"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([PY, "-c", code, *qkdflow(["run", fg, "-q"])], capture_output=True, text=True,
                             env=env, check=True).stdout
        return int(out.split()[-1]) / 1024
    # the ramp source takes ~1 ms per 1 MiB frame; the sink sleeps 10 ms: 10x slower
    if args.only in (None, "rss"):
        results["peak_rss_MiB"] = {"50_frames": round(rss(50), 1), "500_frames": round(rss(500), 1)}
    # 4. how long a run takes to stop after a node process is killed (the issue asks for <= 2 s)
    if args.only in (None, "stop"):
        import signal
        lat = []
        for _ in range(args.runs):
            fg = flowgraph(f"{tmp}/kill.yaml", f"""\
                nodes: {{aau: {{port: {free_port()}}}, du: {{port: {free_port()}}}}}
                blocks:
                  src: {{type: slot_source, node: aau, frames: 100000000, slots_per_frame: 1024}}
                  sink: {{type: null_sink, node: du, delay_s: 0.001}}
                connections: [[src.out, sink.in]]
                """)
            parent = subprocess.Popen(qkdflow(["run", fg, "-q"]), stderr=subprocess.DEVNULL, env=env)
            pid = None
            while pid is None:
                time.sleep(0.2)
                out = subprocess.run(["pgrep", "-f", f"{fg} --child.*--node du"], capture_output=True, text=True).stdout
                pid = int(out.split()[0]) if out.strip() else None
            time.sleep(0.5)
            t = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            parent.wait()
            lat.append(time.perf_counter() - t)
        results["stop_after_kill_s"] = {"median": round(statistics.median(lat), 3), "max": round(max(lat), 3)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
