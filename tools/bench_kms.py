"""Benchmark the ETSI 014 KME over TLS on loopback: enc_keys requests/s and latency vs GET status (baseline).

    python tools/bench_kms.py [--requests 3000] [--connections 2] [--runs 3]

Starts ``qkdflow kms`` (master role, a temporary file store, a temporary test PKI) as a separate process and
drives it from this process over ``--connections`` keep-alive mutual-TLS connections (one thread each).  Per
run, for each call: requests/s over all connections and per-request latency p50/p99 (client side).  Prints
medians over runs; enc_keys rate is also given as a ratio to the status rate measured in the same run.
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_test_ca import make_test_pki  # noqa: E402

from qkdflow.distill.keystore import KeyBlockMeta, KeyStore  # noqa: E402


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def drive(port: int, ctx: ssl.SSLContext, path: str, n: int, conns: int) -> tuple[float, np.ndarray]:
    lat: list[list[float]] = [[] for _ in range(conns)]
    errors: list[str] = []

    def worker(i: int) -> None:
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        c.request("GET", path)  # handshake + warm-up outside the timed loop
        c.getresponse().read()
        go.wait()
        for _ in range(n // conns):
            t = time.perf_counter()
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            lat[i].append(time.perf_counter() - t)
            if r.status != 200:
                errors.append(f"HTTP {r.status}")
                return
        c.close()

    go = threading.Event()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    go.set()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{path}: {errors[0]}")
    all_lat = np.concatenate([np.asarray(x) for x in lat])
    return len(all_lat) / wall, all_lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per call per run")
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pki = make_test_pki(d, ["kme-aau"], ["sae-aau"])
        store_path = os.path.join(d, "aau.db")
        s = KeyStore(store_path)
        need_bytes = 32 * (a.requests * (a.runs + 1) + 10 * a.connections * (a.runs + 1))
        bid = str(uuid.uuid4())
        s.stage(bid, os.urandom(need_bytes), KeyBlockMeta(0.02, 0, 1e-10, 1e-12))
        s.commit(bid, confirmed=True)  # both ends hold it: deliverable
        s.close()
        port = free_port()
        cmd = [sys.executable, "-m", "qkdflow.runtime.cli", "kms", "--store", store_path, "--role", "master",
               "--sae-id", "sae-aau", "--peer-sae-id", "sae-du", "--peer-kme", "kme-du", "--cert", pki["kme-aau"][0],
               "--key", pki["kme-aau"][1], "--ca", pki["ca"], "--port", str(port)]
        server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        try:
            ctx = ssl.create_default_context(cafile=pki["ca"])
            ctx.load_cert_chain(*pki["sae-aau"])
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            rows: dict[str, list[tuple[float, float, float]]] = {"status": [], "enc_keys": [], "ratio": []}
            for run in range(a.runs):
                for name, path in (("status", "/api/v1/keys/sae-du/status"),
                                   ("enc_keys", "/api/v1/keys/sae-du/enc_keys?number=1&size=256")):
                    rate, lat = drive(port, ctx, path, a.requests, a.connections)
                    rows[name].append((rate, float(np.median(lat)) * 1e3, float(np.percentile(lat, 99)) * 1e3))
                    print(f"run {run}: {name:8s} {rate:8.0f} req/s  p50 {rows[name][-1][1]:.2f} ms  "
                          f"p99 {rows[name][-1][2]:.2f} ms", flush=True)
                rows["ratio"].append((rows["enc_keys"][-1][0] / rows["status"][-1][0], 0, 0))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in rows.items()}
    print(f"median of {a.runs} runs, {a.requests} requests each, {a.connections} keep-alive TLS connections:")
    for k in ("status", "enc_keys"):
        print(f"  {k:8s} {med[k][0]:8.0f} req/s  p50 {med[k][1]:.2f} ms  p99 {med[k][2]:.2f} ms")
    print(f"  enc_keys / status rate ratio {med['ratio'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
