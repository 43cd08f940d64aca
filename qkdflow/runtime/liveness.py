"""Peer liveness: a node notices, within seconds, that a node it exchanges edges with has gone.

A peer that is killed (``kill -9``), crashes, or loses its host or cable leaves this node waiting forever on a
socket that ZeroMQ quietly tries to reconnect. So every inter-node socket gets a ZeroMQ socket monitor
(``zmq_socket_monitor``) and TCP keepalive (a silent peer -- pulled cable, frozen host -- is dropped after about
5 s without traffic; with data in flight, after the kernel's retransmission timeout). One watchdog thread per node reads the monitors;
an edge whose peer connection drops after it was established and before the edge's end of stream means the peer
is gone, messages may have been lost, and this node's run must stop: the node fails with a line naming the edge
and the peer. Under ``qkdflow run --node NAME --restart N`` the supervisor then starts the node again and it waits
for the peer to come back (ZeroMQ reconnects by itself); key stores and authentication state make that safe.
"""
from __future__ import annotations

import itertools
import threading
import time

import struct

import zmq

KEEPALIVE_IDLE_S, KEEPALIVE_INTVL_S, KEEPALIVE_CNT = 2, 1, 3  # a silent peer is dropped after ~5 s idle
#: A receiver whose peer left fails once it has delivered nothing new for this long and has not seen EOS.
DRAIN_GRACE_S = 1.0
_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED
_ids = itertools.count()
_WATCHDOGS: dict[int, "Watchdog"] = {}
_LOCK = threading.Lock()


class Watchdog:
    """Reads the socket monitors of one node's inter-node edges; calls ``on_lost(reason)`` once."""

    def __init__(self, ctx: zmq.Context, node: str, peers: dict[str, str], on_lost) -> None:
        self.ctx, self.node, self.peers, self.on_lost = ctx, node, peers, on_lost
        self._pending: list[tuple[zmq.Socket, object]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.lost: str | None = None
        #: the edge whose connection dropped first: the one to name, even when another edge's loss is noticed sooner
        #: (a receiver waits DRAIN_GRACE_S; a malformed frame makes this end's ZeroMQ drop that edge, and the peer's
        #: reaction then drops this node's sender edges at once)
        self._first_drop = None
        self._thread = threading.Thread(target=self._run, name=f"{node}:liveness", daemon=True)
        with _LOCK:
            _WATCHDOGS[id(ctx)] = self
        self._thread.start()

    def attach(self, edge, address: str) -> None:
        """Called by the edge's own thread before it binds or connects its socket."""
        sock = edge.sock
        # TCP keepalive, not ZMTP heartbeats: libzmq 4.3's heartbeat timer can abort the process
        # ("Assertion failed: !_io_error (stream_engine_base.cpp)") when a connection errors meanwhile (seen here)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)
        addr = f"inproc://qkdflow-monitor-{next(_ids)}"
        sock.monitor(addr, _EVENTS)
        m = self.ctx.socket(zmq.PAIR)  # connected here so no event is missed; the lock hands it to the watchdog
        m.setsockopt(zmq.LINGER, 0)
        m.connect(addr)
        with self._lock:
            if self._done.is_set():  # the node is ending: nothing left to watch
                m.close()
                return
            self._pending.append((m, edge))

    def _run(self) -> None:
        poller = zmq.Poller()
        socks: dict[zmq.Socket, list] = {}  # monitor socket -> [edge, handshaken]
        draining: dict = {}  # receiver edge whose peer left -> (time of last progress, its sequence then)
        try:
            while not self._done.is_set():
                with self._lock:
                    pending, self._pending = self._pending, []
                for m, edge in pending:
                    poller.register(m, zmq.POLLIN)
                    socks[m] = [edge, False]
                for m, _ in poller.poll(100):
                    try:
                        event = _event(m)
                    except zmq.Again:
                        continue
                    state = socks[m]
                    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        state[1] = True
                    elif event == zmq.EVENT_MONITOR_STOPPED:
                        poller.unregister(m)
                        m.close()
                        del socks[m]
                    elif event == zmq.EVENT_DISCONNECTED and state[1] and not state[0].ended:
                        # (after a completed handshake only: a refused CURVE peer never was a peer)
                        if self._first_drop is None:
                            self._first_drop = state[0]
                        if hasattr(state[0], "expect"):  # a receiver: its EOS may still wait in the queue
                            draining[state[0]] = (time.monotonic(), state[0].expect)
                        else:
                            self._lose(state[0])
                now = time.monotonic()
                for edge, (t, expect) in list(draining.items()):
                    if edge.ended:
                        del draining[edge]
                    elif edge.expect != expect:  # still delivering what the peer sent before it left
                        draining[edge] = (now, edge.expect)
                    elif now - t > DRAIN_GRACE_S:
                        self._lose(edge)
        finally:
            with self._lock:
                pending, self._pending = self._pending, []
            for m in list(socks) + [m for m, _ in pending]:
                m.close()

    def _lose(self, edge) -> None:
        edge = self._first_drop or edge
        peer = self.peers.get(edge.label, "the peer node")
        reason = (f"peer node {peer} disconnected on edge {edge.label} before its end of stream (killed, crashed "
                  "or unreachable, or a corrupted frame broke the connection); messages may be lost, so this run "
                  "stops")
        if self.lost is None:
            self.lost = reason
            self.on_lost(reason)

    def close(self) -> None:
        """Stop the watchdog (before the node terms its context) and forget it."""
        with self._lock:
            self._done.set()
        self._thread.join(2.0)
        with _LOCK:
            if _WATCHDOGS.get(id(self.ctx)) is self:
                del _WATCHDOGS[id(self.ctx)]


def _event(m: zmq.Socket) -> int:
    """One monitor event (libzmq 4 format: [uint16 event, uint32 value], [endpoint]); its event number.

    Parsed here rather than with ``zmq.utils.monitor``, which imports asyncio (+25 ms per node process)."""
    parts = m.recv_multipart(zmq.NOBLOCK)
    return struct.unpack("=hi", parts[0][:6])[0]


def attach(ctx: zmq.Context, edge, address: str) -> None:
    """Watch ``edge`` (an EdgeSender/EdgeReceiver) if it crosses nodes and its node runs a watchdog."""
    if address.startswith("inproc://"):
        return
    w = _WATCHDOGS.get(id(ctx))
    if w is not None:
        w.attach(edge, address)
