"""An active attacker on the classical channel: one byte of a sifting message flipped on the wire, between two node
processes (issue 4: "a tampered message aborts the block, never yields a wrong key").

The AAU reaches the DU through a TCP proxy (the DU's `host` is 127.0.0.2 where the proxy listens; it binds on
127.0.0.1 with `bind_host`). The proxy flips one byte deep inside the first large AAU -> DU sifting message, once.
Sifting answers go with deferred tags (runtime.auth): the DU refuses the message at once if the flip broke its
header, else when cut_ok's Wegman–Carter tag, which covers it, fails. Either way the session stops before that key
block is committed anywhere, both supervised nodes restart, and later blocks are distilled and committed with
identical keys at both ends.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time

import pytest
import yaml

from qkdflow.runtime.graph import load_flowgraph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bench_recovery", os.path.join(ROOT, "tools", "bench_recovery.py"))
br = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(br)

FLIP_AT = 40_000  # bytes into the connection: past the ZMTP greeting and the hello, inside a big sifting answer


class FlipProxy:
    """Forwards listen -> target; on the first connection, XORs one byte at FLIP_AT of the client's stream."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], flip: bool) -> None:
        self.srv = socket.create_server(listen)
        self.target, self.flip = target, flip
        self.flipped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            try:
                t = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            flip = self.flip and not self.flipped
            self.flipped |= flip
            threading.Thread(target=self._pump, args=(c, t, flip), daemon=True).start()
            threading.Thread(target=self._pump, args=(t, c, False), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket, flip: bool) -> None:
        seen = 0
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if flip and seen <= FLIP_AT < seen + len(data):
                    buf = bytearray(data)
                    buf[FLIP_AT - seen] ^= 0x10
                    data = bytes(buf)
                seen += len(data)
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.srv.close()


def _loopback2_usable() -> bool:
    try:
        s = socket.create_server(("127.0.0.2", 0))
        s.close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _loopback2_usable(), reason="127.0.0.2 cannot be bound on this machine (no loopback /8)")
def test_flipped_byte_on_the_classical_channel_aborts_that_block_only(tmp_path, cli_env):
    d = str(tmp_path)
    fg = br.write_flowgraph(d)
    doc = yaml.safe_load(open(fg))
    doc["nodes"]["du"].update({"host": "127.0.0.2", "bind_host": "127.0.0.1"})
    with open(fg, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    g = load_flowgraph(fg)
    proxies = []
    for e in g.edges:
        if g.blocks[e.dst].node == "du" and g.blocks[e.src].node == "aau":
            port = int(e.connect.rsplit(":", 1)[1])
            proxies.append(FlipProxy(("127.0.0.2", port), ("127.0.0.1", port), flip=e.label == "sift_a.peer -> sift_d.peer"))
    procs, logs = br.start_nodes(fg, d, cli_env, restarts=3, delay_s=0.3)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(br.both_committed(d)) < 2:
            time.sleep(0.05)
    finally:
        br.stop_nodes(procs, logs)
        for p in proxies:
            p.close()
    du_log = open(os.path.join(d, "du.log")).read()
    assert any(p.flipped for p in proxies)
    # the flip lands in a deferred sifting answer (untagged until cut_ok's tag covers it): its header, caught as
    # corrupt at once, or its payload, caught by that tag
    assert ("edge sift_a.peer -> sift_d.peer: authentication failed (tag mismatch" in du_log
            or "edge sift_a.peer -> sift_d.peer: corrupt header" in du_log)
    assert "restart 1 of 3" in du_log  # the session ended and started again
    assert len(br.both_committed(d)) >= 2  # and key blocks followed
    assert br.check_invariants(d) == []
