"""Benchmark the AES-256-GCM fronthaul blocks: payload throughput per core and added latency per packet.

    python tools/bench_fronthaul_crypto.py [--packets 40000] [--packet-bytes 1500] [--runs 5]

Part 1 (in one process, no runtime): frames from ``fronthaul_source`` go through ``fronthaul_encrypt`` then
``fronthaul_decrypt`` work() calls, against a baseline that only copies each frame into a new packet array
(what a pass-through block that rebuilds its output costs).  Per frame size (packets per frame) it reports
encrypt and decrypt payload throughput (Gbit/s, one core each) and the latency a packet gains = (encrypt +
decrypt time of its frame) - (baseline time), median and p99 over frames: every packet of a frame leaves
when its frame is done, so the frame size trades throughput for latency.
Part 2 (whole process): ``qkdflow run`` of source -> encrypt -> decrypt -> sink vs source -> copy -> copy ->
sink in the same command, wall time ratio.  Medians over ``--runs``.  Key use: one 256-bit key per
``rekey_packets`` packets at both ends; printed as bits consumed per second of fronthaul traffic.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from blocks.fronthaul_decrypt import FronthaulDecrypt  # noqa: E402
from blocks.fronthaul_encrypt import FronthaulEncrypt  # noqa: E402
from blocks.fronthaul_source import FronthaulSource  # noqa: E402
from qkdflow.distill.keystore import KeyBlockMeta, KeyStore  # noqa: E402


def fill(paths: list[str], n_bytes: int) -> None:
    bid, key = str(uuid.uuid4()), os.urandom(n_bytes)
    for p in paths:
        s = KeyStore(p)
        s.stage(bid, key, KeyBlockMeta(0.02, 0, 1e-10, 1e-12))
        s.commit(bid, confirmed=True)  # both ends hold it: deliverable
        s.close()


def source_frames(n: int, per_frame: int, pbytes: int) -> list:
    src = FronthaulSource("src", packets=n, packets_per_frame=per_frame, packet_bytes=pbytes, packet_rate_hz=1e5)
    src.start()
    out = []
    while True:
        r = src.work({})
        if not isinstance(r, dict):
            return out
        out.append(r["out"])


def micro(d: str, n: int, per_frame: int, pbytes: int, rekey: int) -> dict:
    a, b = os.path.join(d, f"a{per_frame}-{time.time_ns()}.db"), os.path.join(d, f"b{per_frame}-{time.time_ns()}.db")
    fill([a, b], 32 * (n // rekey + 4))
    fs = source_frames(n, per_frame, pbytes)
    enc = FronthaulEncrypt("enc", store_path=a, rekey_packets=rekey, rekey_interval_s=0)
    dec = FronthaulDecrypt("dec", store_path=b)
    enc.start()
    dec.start()
    t_base, t_enc, t_dec = [], [], []
    try:
        for f in fs:
            t0 = time.perf_counter()
            cp = np.empty(len(f.data), f.data.dtype)  # baseline: rebuild the frame's packet array
            cp[:] = f.data
            f.with_data(cp)
            t1 = time.perf_counter()
            c = enc.work({"in": f})["out"]
            t2 = time.perf_counter()
            p = dec.work({"in": c})["out"]
            t3 = time.perf_counter()
            t_base.append(t1 - t0)
            t_enc.append(t2 - t1)
            t_dec.append(t3 - t2)
            if len(p.data) != len(f.data):
                raise RuntimeError("packets lost in the benchmark")
    finally:
        enc.stop()
        dec.stop()
    te, td, tb = np.array(t_enc), np.array(t_dec), np.array(t_base)
    added = (te + td - tb) * 1e6
    bits = n * pbytes * 8
    return {"enc_gbps": bits / te.sum() / 1e9, "dec_gbps": bits / td.sum() / 1e9, "base_gbps": bits / tb.sum() / 1e9,
            "added_p50_us": float(np.median(added)), "added_p99_us": float(np.percentile(added, 99)),
            "keys": enc.counters["keys_used"], "key_bits": enc.counters["key_bits_consumed"],
            "dec_key_bits": dec.counters["key_bits_consumed"]}


def flowgraph(d: str, n: int, pbytes: int, crypto: bool, rekey: int) -> float:
    a, b = os.path.join(d, f"fa-{time.time_ns()}.db"), os.path.join(d, f"fb-{time.time_ns()}.db")
    fill([a, b], 32 * (n // rekey + 4))
    mid = (f'enc: {{type: fronthaul_encrypt, store_path: "{a}", rekey_packets: {rekey}, rekey_interval_s: 0}}\n'
           f'  dec: {{type: fronthaul_decrypt, store_path: "{b}"}}') if crypto else \
        "enc: {type: copy}\n  dec: {type: copy}"
    fg = os.path.join(d, f"fg-{time.time_ns()}.yaml")
    with open(fg, "w") as fh:
        fh.write(textwrap.dedent(f"""\
            flowgraph: bench
            blocks:
              src: {{type: fronthaul_source, packets: {n}, packet_bytes: {pbytes}, packets_per_frame: 64,
                     packet_rate_hz: 1.0e5}}
              snk: {{type: fronthaul_sink, max_latency_samples: 0}}
            """) + "  " + mid + "\nconnections: [[src.out, enc.in], [enc.out, dec.in], [dec.out, snk.in]]\n")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "qkdflow.runtime.cli", "run", fg, "--json", "-q"],
                       capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(r.stderr)
    snk = json.loads(r.stdout.splitlines()[-1])["nodes"]["main"]["snk"]
    if snk["packets_ok"] != n:
        raise RuntimeError(f"sink saw {snk['packets_ok']} good packets of {n}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=40_000)
    ap.add_argument("--packet-bytes", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rekey-packets", type=int, default=10_000)
    a = ap.parse_args()
    n, pb = a.packets, a.packet_bytes
    with tempfile.TemporaryDirectory() as d:
        print(f"part 1: {n} packets of {pb} bytes, work() calls in one process, median of {a.runs} runs")
        print(" pkts/frame  encrypt Gbit/s  decrypt Gbit/s  baseline Gbit/s  added latency p50 / p99 [us]")
        for per_frame in (1, 2, 4, 16, 64, 256):
            m = [micro(d, n if per_frame > 1 else n // 4, per_frame, pb, a.rekey_packets) for _ in range(a.runs)]
            med = {k: statistics.median(x[k] for x in m) for k in m[0]}
            print(f" {per_frame:10d}  {med['enc_gbps']:14.2f}  {med['dec_gbps']:14.2f}  {med['base_gbps']:15.2f}"
                  f"  {med['added_p50_us']:8.1f} / {med['added_p99_us']:.1f}")
        print(f" key use: {med['key_bits']:.0f} bits at the encryptor, {med['dec_key_bits']:.0f} at the decryptor "
              f"for {n} packets ({med['keys']:.0f} keys, one per {a.rekey_packets} packets) = "
              f"{256 * (n / a.rekey_packets) / (n / 1e5):.0f} bit/s per direction at 1e5 packets/s "
              f"({pb * 8 * 1e5 / 1e9:.2f} Gbit/s of fronthaul)")
        print(f"part 2: qkdflow run, {n} packets, 64 per frame, median of {a.runs} runs (whole process)")
        plain, crypt = [], []
        for _ in range(a.runs):
            plain.append(flowgraph(d, n, pb, False, a.rekey_packets))
            crypt.append(flowgraph(d, n, pb, True, a.rekey_packets))
        mp, mc = statistics.median(plain), statistics.median(crypt)
        gb = n * pb * 8 / 1e9
        print(f"  copy/copy    {mp:.2f} s  ({gb / mp:.2f} Gbit/s payload incl. start-up)")
        print(f"  enc/dec      {mc:.2f} s  ({gb / mc:.2f} Gbit/s payload incl. start-up)  ratio {mc / mp:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
