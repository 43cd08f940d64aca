"""An active attacker on the classical channel: one byte of a sifting message flipped on the wire, between two node
processes (issue 4: "a tampered message aborts the block, never yields a wrong key").

The AAU reaches the DU through a TCP proxy (the DU's `host` is 127.0.0.2 where the proxy listens; it binds on
127.0.0.1 with `bind_host`). The proxy follows the ZMTP 3 framing of the AAU -> DU sifting connection and flips one
byte, once, in a chosen place of the first message that starts past ``FLIP_AFTER`` bytes:

* ``payload``: the middle of a large payload part. Sifting answers go with deferred tags (runtime.auth): the DU
  refuses it when cut_ok's Wegman–Carter tag, which covers it, fails ("tag mismatch"), or sooner, when sifting finds
  the answer inconsistent (a flipped match bit changes the answer's sizes); that failure then says the answer was
  not yet authenticated.
* ``header``: the first byte of a message header's JSON trailer: refused at once as a corrupt header.
* ``framing``: the low byte of a long frame's ZMTP length. The frames after it are cut at the wrong places: the DU's
  ZeroMQ drops the connection, or a part lands where a tag or a header should be; either way the DU's failure names
  the sifting edge.
* ``stall``: 2^28 added to a long frame's length. The DU's ZeroMQ waits for 256 MiB more of that part, which the
  AAU never sends: the connection stays up and quiet, and only the DU's wait for its sifting answers, bounded by the
  node field ``peer_timeout_s`` (10 s here), ends the session.

Each way the session stops before that key block is committed anywhere, both supervised nodes restart, and later
blocks are distilled and committed with identical keys at both ends. Where the flip lands is chosen from the
framing, not from a byte offset: the messages' sizes depend on how the DU batches its clicks, which depends on
timing (a fixed offset once landed in the framing in CI).
"""
from __future__ import annotations

import importlib.util
import os
import re
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

FLIP_AFTER = 20_000  # bytes into the connection: past the ZMTP greeting, the handshake and the hello
GREETING = 64  # ZMTP 3 greeting (RFC 23); then frames: flags (MORE 1, LONG 2, COMMAND 4), size (1 or 8 bytes), body
BIG_PART = 256  # a ZMTP long frame (> 255 bytes): the payload parts of sifting answers


class ZmtpFlipper:
    """Follows the frames of one ZMTP 3 byte stream and picks the one byte to flip (absolute offset)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.buf = bytearray()
        self.base = 0  # absolute offset of buf[0]
        self.next = GREETING  # absolute offset of the next frame header
        self.message_start = True  # the next non-command frame starts a message
        self.target: int | None = None

    def feed(self, data: bytes) -> None:
        """Parse what has arrived; sets ``target`` once the chosen place is known."""
        self.buf += data
        while self.target is None:
            i = self.next - self.base
            if i + 2 > len(self.buf):
                break
            flags = self.buf[i]
            if flags & 2:
                if i + 9 > len(self.buf):
                    break
                size, body = int.from_bytes(self.buf[i + 1:i + 9], "big"), self.next + 9
            else:
                size, body = self.buf[i + 1], self.next + 2
            starts = self.message_start and not flags & 4
            if not flags & 4:
                self.message_start = not flags & 1
            if self.next >= FLIP_AFTER:
                if self.where == "payload" and not starts and size >= BIG_PART:
                    self.target = body + size // 2
                elif self.where == "header" and starts and size > 32:
                    self.target = body + 32  # the JSON trailer's "{"
                elif self.where == "framing" and flags & 2 and size >= BIG_PART:
                    self.target = self.next + 8  # the length's lowest byte
                elif self.where == "stall" and flags & 2 and size >= BIG_PART:
                    self.target = self.next + 5  # 0x10 in the length's byte of 2^24: + 2^28
            self.next = body + size
            drop = min(self.next, self.base + len(self.buf)) - self.base
            del self.buf[:drop]
            self.base += drop


class FlipProxy:
    """Forwards listen -> target; on the first connection, flips one byte of the client's stream (``where``)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], where: str | None) -> None:
        self.srv = socket.create_server(listen)
        self.target, self.where = target, where
        self.flipped_at: int | None = None
        self._first = True
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
            flipper = ZmtpFlipper(self.where) if self.where and self._first else None
            self._first = False
            threading.Thread(target=self._pump, args=(c, t, flipper), daemon=True).start()
            threading.Thread(target=self._pump, args=(t, c, None), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, flipper: ZmtpFlipper | None) -> None:
        seen = 0
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if flipper is not None and self.flipped_at is None:
                    flipper.feed(data)
                    t = flipper.target
                    if t is not None and seen <= t < seen + len(data):
                        buf = bytearray(data)
                        buf[t - seen] ^= 0x10
                        data = bytes(buf)
                        self.flipped_at = t
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
@pytest.mark.parametrize("where, refusal", [
    ("payload", r"edge sift_a\.peer -> sift_d\.peer: (authentication failed \(tag mismatch"
                r"|\d+ deferred message\(s\) delivered and not yet authenticated)"),
    ("header", r"edge sift_a\.peer -> sift_d\.peer: corrupt header"),
    ("framing", r"sift_a\.peer -> sift_d\.peer"),
    ("stall", r"block sift_d: sift: \d+ chunk\(s\) wait for the AAU's answers: nothing from peer node aau for 10 s"),
])
def test_flipped_byte_on_the_classical_channel_aborts_that_block_only(tmp_path, cli_env, where, refusal):
    d = str(tmp_path)
    fg = br.write_flowgraph(d)
    doc = yaml.safe_load(open(fg))
    doc["nodes"]["du"].update({"host": "127.0.0.2", "bind_host": "127.0.0.1"})
    if where == "stall":
        doc["nodes"]["du"]["peer_timeout_s"] = 10
    with open(fg, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    g = load_flowgraph(fg)
    proxies = []
    for e in g.edges:
        if g.blocks[e.dst].node == "du" and g.blocks[e.src].node == "aau":
            port = int(e.connect.rsplit(":", 1)[1])
            flip = where if e.label == "sift_a.peer -> sift_d.peer" else None
            proxies.append(FlipProxy(("127.0.0.2", port), ("127.0.0.1", port), flip))
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
    assert [p.flipped_at is not None for p in proxies].count(True) == 1
    # the DU's first failure names the tampered edge (and, for a flip inside a part, the refusal)
    failures = [ln for ln in du_log.splitlines() if ln.startswith("qkdflow: restart: node du") and "signal" not in ln]
    assert failures and re.search(refusal, failures[0]), failures
    assert "restart 1 of 3" in du_log  # the session ended and started again
    assert len(br.both_committed(d)) >= 2  # and key blocks followed
    assert br.check_invariants(d) == []
