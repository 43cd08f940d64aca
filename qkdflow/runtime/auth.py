"""Wegman–Carter authentication of the classical channel, per inter-node message edge.

Every message on a message edge between two nodes whose ``nodes:`` entries name a
``psk_file`` carries one extra ZeroMQ part: a Wegman–Carter tag (``qkdflow.distill.auth``:
polynomial hash over GF(2^61-1) + one-time pad; Wegman & Carter, JCSS 22, 265 (1981)) over the
header (which holds the edge's sequence number) and every payload part. A forged, altered,
replayed or reordered message fails verification and stops the run with a message naming the
edge — blocks never see it, so it can never shape a key.

Key material. Both hosts hold the same pre-shared key file. Authenticated edges are numbered in
flowgraph order; edge k's pool starts with the k-th of equal slices of the file. New QKD key
replenishes the pools: a key-store block calls ``Block.replenish_authentication(bits)`` with the
same bits, in the same order, at both ends; the bits are split the same way. A sender or
receiver whose pool is empty waits (up to ``POOL_WAIT_S``) for replenishment, then fails with a
clear message.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from qkdflow.distill.auth import Authenticator, KeyPool, KeyPoolError, KeyPoolExhausted

POOL_WAIT_S = 30.0


class AuthFailure(Exception):
    """A message on an authenticated edge did not verify."""


class EdgeAuth:
    """The tagger (sender side) or verifier (receiver side) of one authenticated edge."""

    def __init__(self, bootstrap_bits: np.ndarray, sender: bool, label: str, stop: threading.Event) -> None:
        self.pool = KeyPool(bootstrap_bits)
        self.auth = Authenticator(self.pool, "alice" if sender else "bob")
        self.lock = threading.Lock()
        self.label, self.stop = label, stop
        self.tags = 0

    def _with_pool(self, fn):
        deadline = time.monotonic() + POOL_WAIT_S
        while True:
            with self.lock:
                try:
                    return fn()
                except KeyPoolExhausted:
                    pass
            if self.stop.is_set():
                from .transport import Stopped
                raise Stopped
            if time.monotonic() > deadline:
                raise KeyPoolExhausted(f"edge {self.label}: authentication key pool empty for {POOL_WAIT_S:g} s; "
                                       "replenish it from new key (a larger psk_file or more key per block)")
            time.sleep(0.01)

    def tag(self, parts: list, seq: int) -> bytes:
        msg = b"".join(bytes(p) for p in parts)
        self.tags += 1
        return self._with_pool(lambda: self.auth.tag(msg, seq))

    def verify(self, parts: list, seq: int, tag: bytes) -> None:
        msg = b"".join(bytes(p) for p in parts)
        from qkdflow.distill.auth import AuthenticationError

        def check():
            try:
                self.auth.verify(msg, seq, tag)
            except AuthenticationError as e:
                raise AuthFailure(f"edge {self.label}: authentication failed ({e}); the message was not "
                                  "delivered and the run stops") from None
        self._with_pool(check)
        self.tags += 1

    def add(self, bits: np.ndarray) -> None:
        with self.lock:
            self.pool.add(bits)


class NodeAuth:
    """All authenticated edges touching one node, with their shared bootstrap and replenishment."""

    def __init__(self, graph, node: str, stop: threading.Event) -> None:
        self.edges = authenticated_edges(graph)
        self.node = node
        self.by_edge: dict[int, EdgeAuth] = {}
        if not self.edges:
            return
        spec = graph.nodes[node]
        mine = [e for e in self.edges if node in (graph.blocks[e.src].node, graph.blocks[e.dst].node)]
        if not mine:
            return
        need = len(self.edges) * Authenticator.required_bootstrap_bits(1, 16) * 2
        try:
            pool = KeyPool.from_file(spec.psk_file, need)
        except KeyPoolError as e:
            raise ValueError(f"nodes.{node}.psk_file: {e}") from None
        bits = _slices(pool.take(pool.available("alice->bob"), "alice->bob"),
                       pool.take(pool.available("bob->alice"), "bob->alice"), len(self.edges))
        for k, e in enumerate(self.edges):
            if e in mine:
                sender = graph.blocks[e.src].node == node
                self.by_edge[e.index] = EdgeAuth(bits[k], sender, e.label, stop)

    def replenish(self, key_bits: np.ndarray) -> None:
        chunks = np.array_split(np.asarray(key_bits, dtype=np.uint8), max(len(self.edges), 1))
        for k, e in enumerate(self.edges):
            ea = self.by_edge.get(e.index)
            if ea is not None and chunks[k].size:
                ea.add(chunks[k])


def _slices(a: np.ndarray, b: np.ndarray, n: int) -> list[np.ndarray]:
    """Re-join the file's bits (KeyPool split them into halves) and cut n equal slices."""
    whole = np.concatenate([a, b])
    size = whole.size // n
    return [whole[k * size:(k + 1) * size] for k in range(n)]


def authenticated_edges(graph) -> list:
    """Message edges between two nodes that both name a psk_file, in flowgraph order."""
    out = []
    for e in graph.edges:
        sn, dn = graph.blocks[e.src].node, graph.blocks[e.dst].node
        if e.kind == "message" and sn != dn and graph.nodes[sn].psk_file and graph.nodes[dn].psk_file:
            out.append(e)
    return out
