"""The AAU and the DU as two hosts: two Linux network namespaces joined by a veth pair (made here, removed after).

Each node runs as `qkdflow run FLOWGRAPH --node NAME` inside its own namespace, binding on its own address and
connecting to the other's, started in either order; both must end with identical key stores.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AAU_IP, DU_IP = "10.233.70.1", "10.233.70.2"


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    tag = f"{os.getpid() % 10000}"
    ns_a, ns_d, va, vd = f"qkdf-aau-{tag}", f"qkdf-du-{tag}", f"qa{tag}", f"qd{tag}"
    steps = [("netns", "add", ns_a), ("netns", "add", ns_d),
             ("link", "add", va, "type", "veth", "peer", "name", vd),
             ("link", "set", va, "netns", ns_a), ("link", "set", vd, "netns", ns_d),
             ("-n", ns_a, "addr", "add", f"{AAU_IP}/24", "dev", va),
             ("-n", ns_d, "addr", "add", f"{DU_IP}/24", "dev", vd),
             ("-n", ns_a, "link", "set", va, "up"), ("-n", ns_d, "link", "set", vd, "up"),
             ("-n", ns_a, "link", "set", "lo", "up"), ("-n", ns_d, "link", "set", "lo", "up")]
    try:
        for s in steps:
            r = _ip(*s)
            if r.returncode != 0:
                pytest.skip(f"network namespaces are not permitted on this machine (ip {' '.join(s)}: "
                            f"{r.stderr.strip()}); the loopback two-node tests still run")
        yield ns_a, ns_d
    finally:
        _ip("netns", "del", ns_a)
        _ip("netns", "del", ns_d)


def test_aau_and_du_on_two_hosts_make_the_same_keys(two_hosts, tmp_path):
    ns_a, ns_d = two_hosts
    sa, sd = tmp_path / "aau.sqlite", tmp_path / "du.sqlite"
    common = ["-p", f"nodes.aau.host={AAU_IP}", "-p", f"nodes.du.host={DU_IP}",
              "-p", f"store_a.store_path={sa}", "-p", f"store_d.store_path={sd}", "-p", "pa_a.seed=5"]
    env = dict(os.environ, PYTHONPATH=ROOT)

    def node(ns: str, name: str) -> subprocess.Popen:
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "qkdflow.runtime.cli", "run",
               "flowgraphs/distill_test.yaml", "--node", name, "--timeout", "120", "--json", *common]
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    aau = node(ns_a, "aau")  # the AAU first: it waits for the DU host to appear
    time.sleep(1.0)
    du = node(ns_d, "du")
    out_d, err_d = du.communicate(timeout=180)
    out_a, err_a = aau.communicate(timeout=60)
    assert du.returncode == 0, err_d[-2000:]
    assert aau.returncode == 0, err_a[-2000:]
    a = sorted(sqlite3.connect(sa).execute("select block_id, key from blocks where state = 'committed'"))
    d = sorted(sqlite3.connect(sd).execute("select block_id, key from blocks where state = 'committed'"))
    assert a and a == d
