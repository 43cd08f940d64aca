"""Benchmark: gr-zeromq stream helpers vs. bare pyzmq over ipc:// (whole-process timing).

Each mode runs in a fresh subprocess that pushes ``--messages`` messages of ``--items`` float32
items from a sender thread to a receiver in the main thread and checks the received sum:

* ``raw``:  bare pyzmq PUSH/PULL, ``arr.tobytes()`` out, ``np.frombuffer`` + ``np.concatenate`` in
  (the baseline: the least a Python gr-zeromq peer has to do);
* ``gr``:   GrStreamSender/GrStreamReceiver, pass_tags=False (same bytes on the wire as raw);
* ``tags``: the same with pass_tags=True and one tag per message.

Usage: python tools/bench_gr_wire.py [--runs 5] [--messages 2000] [--items 4096]
Prints the median wall time per mode and its ratio to ``raw`` measured in the same command.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def run_mode(mode: str, messages: int, items: int, address: str) -> None:
    import numpy as np
    import zmq

    from qkdflow.gr.sockets import GrStreamReceiver, GrStreamSender
    from qkdflow.gr.wire import Tag

    block = np.arange(items, dtype=np.float32)
    expect = float(block.sum(dtype=np.float64)) * messages
    if mode == "raw":
        ctx = zmq.Context()
        rx = ctx.socket(zmq.PULL)
        rx.bind(address)

        def send() -> None:
            tx = ctx.socket(zmq.PUSH)
            tx.connect(address)
            for _ in range(messages):
                tx.send(block.tobytes(), copy=False)
            tx.close(linger=-1)

        t = threading.Thread(target=send)
        t.start()
        chunks = [np.frombuffer(rx.recv(copy=False).buffer, np.float32) for _ in range(messages)]
        out = np.concatenate(chunks)
        t.join()
        rx.close()
        ctx.term()
    else:
        tags = mode == "tags"
        rx = GrStreamReceiver(address, np.float32, pass_tags=tags, bind=True)

        def send() -> None:
            with GrStreamSender(address, np.float32, pass_tags=tags, bind=False, linger_ms=-1) as tx:
                for _ in range(messages):
                    tx.send(block, [Tag(tx.nitems_sent, "mark", 1)] if tags else ())

        t = threading.Thread(target=send)
        t.start()
        got = rx.receive(max_items=messages * items, idle_timeout_ms=10_000)
        out = got.items
        t.join()
        rx.close()
        assert not tags or len(got.tags) == messages
    assert out.size == messages * items and float(out.sum(dtype=np.float64)) == expect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--items", type=int, default=4096)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        run_mode(args.mode, args.messages, args.items, args.address)
        return
    modes = ("raw", "gr", "tags")
    times: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for mode in modes:  # interleaved so machine load drifts hit all modes alike
                cmd = [sys.executable, __file__, "--mode", mode, "--messages", str(args.messages),
                       "--items", str(args.items), "--address", f"ipc://{tmp}/b{run}{mode}"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True)
                times[mode].append(time.perf_counter() - t0)
    mb = args.messages * args.items * 4 / 1e6
    base = statistics.median(times["raw"])
    print(f"{args.messages} messages x {args.items} float32 ({mb:.0f} MB), median of {args.runs} runs")
    for mode in modes:
        med = statistics.median(times[mode])
        print(f"{mode:5s} {med:6.3f} s  ratio to raw {med / base:5.2f}")


if __name__ == "__main__":
    main()
