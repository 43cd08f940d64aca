"""Run one node of a flowgraph: one thread per block, ZeroMQ sockets on every edge.

A block thread waits on its input sockets (only on stream inputs whose one-frame queue is
empty, so backpressure reaches the producer), calls ``work`` when every stream input has a
frame for the same slot range, and sends results downstream. Messages are handled as they
arrive. End of stream travels as an explicit EOS part; a block ends when its stream inputs
have ended and ``finished()`` says its protocol is complete. An exception in any block sets
the node's stop flag: every thread unwinds within ``POLL_MS`` and the node reports which
block failed and why.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import zmq

from . import wire
from .block import DONE, Block, BlockError, Frame
from . import liveness
from .auth import AuthFailure, NodeAuth, unauthenticated_note
from .graph import Edge, Graph
from .transport import POLL_MS, EdgeReceiver, EdgeSender, Stopped, tune_malloc


@dataclass
class BlockStats:
    frames_in: int = 0
    frames_out: int = 0
    slots: int = 0
    items_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    work_s: float = 0.0
    run_s: float = 0.0  # start() to the end of the block's stream
    cpu_s: float | None = None  # CPU time of the block's own thread (thread-per-block scheduling only)


@dataclass
class NodeFailure:
    node: str
    block: str
    reason: str
    detail: str = ""


@dataclass
class NodeResult:
    node: str
    ok: bool
    failure: NodeFailure | None
    blocks: dict = field(default_factory=dict)
    wall_s: float = 0.0


def deliver(blk: Block, e: Edge, kind: int, obj, queues: dict, st: BlockStats) -> None:
    """Hand one received part to a block: a message to ``handle``, a frame to its port's queue."""
    if kind == wire.MESSAGE:
        if e.kind != "message":
            raise wire.WireError(f"edge {e.label}: message on a stream edge")
        st.messages_in += 1
        blk.handle(e.dst_port, obj)
    elif kind == wire.DATA:
        if e.kind != "stream":
            raise wire.WireError(f"edge {e.label}: data frame on a message edge")
        queues[e.dst_port].append(obj)


def work_aligned(blk: Block, queues: dict, st: BlockStats):
    """Pop one frame per stream input (they must cover the same slots) and call ``work``."""
    ins = {p: q.popleft() for p, q in queues.items()}
    first = next(iter(ins.values()))
    for p, f in ins.items():
        if (f.start, f.stop) != (first.start, first.stop):
            raise BlockError(f"misaligned input frames: {p} covers [{f.start}, {f.stop}) but "
                             f"{next(iter(ins))} covers [{first.start}, {first.stop})")
    st.frames_in += len(ins)
    st.slots += first.slots
    t0 = time.perf_counter()
    out = blk.work(ins)
    st.work_s += time.perf_counter() - t0
    if out is DONE:
        raise BlockError("work returned DONE, which only sources may do")
    return out


def output_frames(blk: Block, senders: dict, outs, st: BlockStats):
    """Check what ``work`` returned and yield ``(senders of the port, frame)``; a port may get a list of frames."""
    if not outs:
        return
    for port, frames in outs.items():
        if frames is None:
            continue
        ss = senders.get(port)
        if ss is None and blk.port("out", port) is None:
            raise BlockError(f"work returned a frame for unknown output port {port!r}")
        for frame in (frames if isinstance(frames, list) else (frames,)):
            if not isinstance(frame, Frame):
                raise BlockError(f"work returned {type(frame).__name__} for port {port!r}, expected a Frame")
            yield ss or (), frame
            st.frames_out += 1
            st.items_out += len(frame.data)


class PeerWait:
    """Stops a block that waits longer than its node's ``peer_timeout_s`` for a block in another node
    (``Block.awaiting_peer``): a peer that is alive but never answers must end the run with a clear error."""

    def __init__(self, node: "NodeRunner", block: Block, in_edges: list[Edge], receivers: dict) -> None:
        g = node.graph
        self.block, self.timeout_s = block, g.nodes[node.name].peer_timeout_s
        remote = [e for e in in_edges if g.blocks[e.src].node != node.name]
        self.peers = ", ".join(sorted({g.blocks[e.src].node for e in remote}))
        self.socks = [receivers[e.index].sock for e in remote if e.index in receivers]
        self.active = bool(remote) and type(block).awaiting_peer is not Block.awaiting_peer

    def check(self) -> None:
        """Raise BlockError if the wait is over (call only when ``active``)."""
        w = self.block.awaiting_peer()
        if w is None or time.monotonic() - w[0] <= self.timeout_s:
            return
        if any(s.poll(0, zmq.POLLIN) for s in self.socks):  # the answer is here, this thread was just busy
            return
        raise BlockError(f"{w[1]}: nothing from peer node {self.peers} for {self.timeout_s:g} s (the peer is "
                         "stuck, or a corrupted frame stalled the connection; node field peer_timeout_s), "
                         "so this run stops")


class BlockRunner(threading.Thread):
    def __init__(self, node: "NodeRunner", block: Block, in_edges: list[Edge], out_edges: list[Edge]) -> None:
        super().__init__(name=f"{node.name}:{block.name}", daemon=True)
        self.node, self.block = node, block
        self.in_edges, self.out_edges = in_edges, out_edges
        self.stats = BlockStats()
        self.error: NodeFailure | None = None
        self._msg_eos_sent = False

    # sockets are made in the thread that uses them (ZeroMQ sockets are not thread-safe)
    def _open(self) -> None:
        ctx = self.node.ctx
        for e in self.in_edges:  # receivers always bind, senders connect (any start order works)
            self.receivers[e.index] = EdgeReceiver(ctx, e.address, True, e.queue_frames, e.dtype, e.label,
                                                   auth=self.node.auth.by_edge.get(e.index),
                                                   curve=self.node.curve.server(e),
                                                   accept_deferred=bool(getattr(self.block, "peer_deferred_types", ())))

    def _connect(self) -> None:
        ctx, stop = self.node.ctx, self.node.stop
        for e in self.out_edges:
            sender = EdgeSender(ctx, e.connect, False, e.queue_frames, stop, with_dtype=e.dtype is None, label=e.label,
                                auth=self.node.auth.by_edge.get(e.index), curve=self.node.curve.client(e))
            self.senders.setdefault(e.src_port, []).append(sender)

    def run(self) -> None:
        blk = self.block
        self.receivers, self.senders = {}, {}
        try:
            try:
                self._open()
            finally:
                self.node.opened()
            self.node.bound.wait()  # every receiver is bound before anyone connects
            self._connect()
        except zmq.ZMQError as e:
            self._fail(f"cannot open edge socket: {e}", "")
            self._close()
            return
        started = stopped = False
        try:
            blk._emit = self._emit
            t_run = time.perf_counter()
            blk.start()
            started = True
            self._loop()
            self.stats.run_s = time.perf_counter() - t_run
            stopped = True
            blk.stop()
        except Stopped:
            pass
        except (wire.WireError, AuthFailure) as e:
            self._fail(str(e), "")
        except BlockError as e:
            self._fail(str(e) + unauthenticated_note(self.receivers.values()), "")
        except Exception as e:  # a bug or bad data inside a block: name it, keep the traceback for -v
            self._fail(f"{type(e).__name__}: {e}" + unauthenticated_note(self.receivers.values()),
                       traceback.format_exc())
        finally:
            self.stats.cpu_s = time.thread_time()   # the thread's own clock: everything it did was this block's
            if started and not stopped:  # a failure elsewhere: still release files and sockets the block holds
                try:
                    blk.stop()
                except Exception:
                    pass
            self._close()

    def _close(self) -> None:
        for r in self.receivers.values():
            r.close()
        failing = self.node.stop.is_set()
        for ss in self.senders.values():
            for s in ss:
                s.close(0 if failing else None)

    def _fail(self, reason: str, detail: str) -> None:
        self.error = NodeFailure(self.node.name, self.block.name, reason, detail)
        self.node.fail(self.error)

    # ---- sending --------------------------------------------------------------------------
    def _emit(self, port: str, msg: dict) -> None:
        if self.block.port("out", port) is None:
            raise BlockError(f"emit on unknown output port {port!r}")
        if self._msg_eos_sent:
            raise BlockError(f"emit on {port!r} after the block said it had finished")
        for s in self.senders.get(port, ()):
            s.send_message(msg)
            self.stats.messages_out += 1

    def _send_outputs(self, outs: dict | None) -> None:
        for senders, frame in output_frames(self.block, self.senders, outs, self.stats):
            for s in senders:
                s.send_frame(frame)

    def _send_eos(self, message_ports: bool) -> None:
        ports = {p.name for p in (self.block.message_outputs() if message_ports else self.block.stream_outputs())}
        for port in ports:
            for s in self.senders.get(port, ()):
                s.send_eos()

    # ---- the loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        blk, stop, st = self.block, self.node.stop, self.stats
        stream_ports = [p.name for p in blk.stream_inputs()]
        by_edge = {e.index: e for e in self.in_edges}
        queues: dict[str, deque] = {p: deque() for p in stream_ports if any(e.dst_port == p for e in self.in_edges)}
        ended: set[str] = set()
        pure_message = not blk.stream_inputs() and not blk.stream_outputs()
        source = not blk.stream_inputs() and not pure_message
        source_done = not source
        msg_edges = [i for i, e in by_edge.items() if e.kind == "message"]
        streams_over = False
        msg_eos_sent = False
        poller = zmq.Poller()
        registered: set[int] = set()
        waits = PeerWait(self.node, blk, self.in_edges, self.receivers)

        while not stop.is_set():
            if waits.active:
                waits.check()
            if source and not source_done:
                self._drain_messages(by_edge, timeout=0)
                t0 = time.perf_counter()
                out = blk.work({})
                st.work_s += time.perf_counter() - t0
                if out is DONE:
                    source_done = True
                else:
                    if out:
                        f = next((x for x in out.values() if isinstance(x, Frame)), None)
                        if f is not None:
                            st.slots += f.slots
                    self._send_outputs(out)
                continue
            if pure_message:
                inputs_over = all(self.receivers[i].ended for i in msg_edges)
            else:
                inputs_over = source or (queues.keys() <= ended and not any(queues.values()))
            if not streams_over and inputs_over:
                streams_over = True
                self._send_outputs(blk.end())
                self._send_eos(message_ports=False)
            if streams_over and not msg_eos_sent and blk.finished():
                # done: tell every peer now, then keep reading until each peer has said the same, so no
                # peer ever sends into a closed socket (message cycles end in any order)
                self._send_eos(message_ports=True)
                msg_eos_sent = self._msg_eos_sent = True
            if msg_eos_sent and all(self.receivers[i].ended for i in msg_edges):
                return
            # wait on what we can take: stream inputs with room, all message inputs
            want = {i for i, e in by_edge.items() if not self.receivers[i].ended
                    and (e.kind == "message" or not queues.get(e.dst_port))}
            for i in registered - want:
                poller.unregister(self.receivers[i].sock)
            for i in want - registered:
                poller.register(self.receivers[i].sock, zmq.POLLIN)
            registered = want
            if not want:
                if streams_over and not msg_eos_sent:
                    raise BlockError("waiting for messages to finish its protocol, but every message input has ended")
                time.sleep(POLL_MS / 1000)
                continue
            if len(registered) == 1:
                # one socket to wait on: a blocking receive (ZeroMQ waits with the GIL released; no poll, then
                # receive), back after RCVTIMEO = POLL_MS to look at the stop flag
                (i,) = registered
                try:
                    arrived: Iterable = [(i, self.receivers[i].recv())]
                except zmq.Again:
                    arrived = ()
            else:
                ready = dict(poller.poll(POLL_MS))
                arrived = ((i, self.receivers[i].recv()) for i in list(registered)  # each delivered before the next
                           if self.receivers[i].sock in ready)
            for i, (kind, obj) in arrived:
                e = by_edge[i]
                if kind == wire.EOS:
                    if e.kind == "stream":
                        ended.add(e.dst_port)
                else:
                    deliver(blk, e, kind, obj, queues, st)
            # hold no frame past its work: a received payload is a buffer ZeroMQ's I/O thread allocated, and
            # freeing two at once lets glibc trim that thread's heap, so the next ones page-fault in afresh
            # (measured: ~50 faults per 1 MiB frame, twice the bare CPU per byte)
            arrived = obj = None
            while queues and all(queues.values()):
                self._send_outputs(work_aligned(blk, queues, st))
        raise Stopped

    def _drain_messages(self, by_edge: dict, timeout: int) -> None:
        for i, e in by_edge.items():
            r = self.receivers[i]
            if e.kind != "message" or r.ended:
                continue
            while r.sock.poll(timeout, zmq.POLLIN):
                kind, obj = r.recv()
                if kind == wire.EOS:
                    break
                self.stats.messages_in += 1
                self.block.handle(e.dst_port, obj)


class _NoCurve:
    """``curve.NodeCurve`` of a node without ``curve_keys``: plain sockets on every edge."""

    def server(self, edge) -> None:
        return None

    def client(self, edge) -> None:
        return None

    def stop(self) -> None:
        pass


class NodeRunner:
    """All blocks of one node in this process."""

    def __init__(self, graph: Graph, name: str, ctx: zmq.Context | None = None,
                 status: Callable[[dict], None] | None = None, status_period_s: float = 0.5) -> None:
        if name not in graph.nodes:
            raise KeyError(f"no node {name!r} in flowgraph {graph.name} (nodes: {', '.join(graph.nodes)})")
        self.graph, self.name = graph, name
        self._own_ctx = ctx is None  # our own context is termed at the end: last parts leave before exit
        tune_malloc()  # before ZeroMQ allocates its first message buffer
        self.ctx = ctx or zmq.Context()
        self.stop = threading.Event()
        self.bound = threading.Event()
        self._lock = threading.Lock()
        self._opened = 0
        self.failure: NodeFailure | None = None
        self.status, self.status_period_s = status, status_period_s
        self.auth = NodeAuth(graph, name, self.stop)  # raises ValueError for a missing/short psk_file
        if graph.nodes[name].curve_keys:  # zmq.auth.thread (asyncio) costs ~15 ms of start-up: only when used
            from .curve import NodeCurve

            self.curve = NodeCurve(graph, name, self.ctx)  # raises ValueError for missing CURVE certificates
        else:
            self.curve = _NoCurve()
        self.blocks = {b: graph.instantiate(b) for b in graph.blocks_of(name)}
        for blk in self.blocks.values():
            blk._replenish, blk._authorize = self.auth.replenish, self.auth.authorize
        in_edges = {b: [e for e in graph.edges if e.dst == b] for b in self.blocks}
        out_edges = {b: [e for e in graph.edges if e.src == b] for b in self.blocks}
        # QKDFLOW_SCHEDULER overrides every node's choice (used to run the whole suite under each scheduler)
        if (os.environ.get("QKDFLOW_SCHEDULER") or graph.nodes[name].scheduler) == "single":
            from .loop import CoopBlock, run_single

            self.runners = [CoopBlock(self, blk, in_edges[b], out_edges[b]) for b, blk in self.blocks.items()]
            self.threads = [threading.Thread(target=run_single, args=(self, self.runners), name=f"{name}:single",
                                             daemon=True)]
            self.bound.set()  # one thread binds every receiver before it connects any sender
        else:
            self.runners = [BlockRunner(self, blk, in_edges[b], out_edges[b]) for b, blk in self.blocks.items()]
            self.threads = self.runners

    def opened(self) -> None:
        with self._lock:
            self._opened += 1
            if self._opened == len(self.runners):
                self.bound.set()

    def fail(self, failure: NodeFailure) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = failure
        self.stop.set()

    def summary(self) -> dict:
        out = {}
        for r in self.runners:
            s = r.stats
            d = {"frames_in": s.frames_in, "frames_out": s.frames_out, "slots": s.slots, "items_out": s.items_out,
                 "messages_in": s.messages_in, "messages_out": s.messages_out, "work_s": round(s.work_s, 6),
                 "run_s": round(s.run_s, 6)}
            if s.cpu_s is not None:
                d["cpu_s"] = round(s.cpu_s, 6)
            d.update(r.block.counters)
            remote = [x for xs in r.senders.values() for x in xs if getattr(x, "remote", False)]
            if remote:   # bytes this block sent to other nodes (every part, headers and tags included)
                d["net_bytes_out"] = sum(x.bytes for x in remote)
            tagged = [x.auth for xs in r.senders.values() for x in xs if getattr(x, "auth", None) is not None]
            if tagged:   # authenticated peer edges: tags sent (one pad each) and messages sent with deferred tags
                d["auth_tags_out"] = sum(a.tags for a in tagged)
                d["auth_deferred_out"] = sum(a.deferred for a in tagged)
            try:
                d.update(r.block.report())
            except Exception as e:  # a report must never hide the run's result
                d["report_error"] = f"{type(e).__name__}: {e}"
            out[r.block.name] = d
        return out

    def run(self, timeout_s: float | None = None) -> NodeResult:
        t0 = time.perf_counter()
        peers = {e.label: (self.graph.blocks[e.src].node if self.graph.blocks[e.dst].node == self.name
                           else self.graph.blocks[e.dst].node) for e in self.graph.edges
                 if self.graph.blocks[e.src].node != self.graph.blocks[e.dst].node}
        watchdog = liveness.Watchdog(self.ctx, self.name, peers,
                                     lambda why: self.fail(NodeFailure(self.name, "-", why))) if peers else None
        if not self.runners:
            self.bound.set()
        # Binding order: receivers bind in their own threads; senders wait for `bound`.
        for r in self.threads:
            r.start()
        next_status = time.perf_counter() + self.status_period_s
        try:
            while any(r.is_alive() for r in self.threads):
                for r in self.threads:
                    r.join(0.05)
                now = time.perf_counter()
                if self.status is not None and now >= next_status:
                    next_status = now + self.status_period_s
                    self.status(self.summary())
                if timeout_s is not None and now - t0 > timeout_s and not self.stop.is_set():
                    self.fail(NodeFailure(self.name, "-", f"timed out after {timeout_s:g} s"))
                if self.stop.is_set():
                    deadline = time.perf_counter() + 1.5
                    for r in self.threads:
                        r.join(max(0.0, deadline - time.perf_counter()))
                    break
        except KeyboardInterrupt:
            self.fail(NodeFailure(self.name, "-", "interrupted"))
            for r in self.threads:
                r.join(1.0)
        if watchdog is not None:
            watchdog.close()  # its monitor sockets must close before the context is termed
        self.curve.stop()
        self.auth.close()  # persists the receivers' pad marks, releases the state file
        if self._own_ctx:
            if any(r.is_alive() for r in self.threads):
                self.ctx.destroy(linger=0)  # a stuck thread: do not wait on its sockets
            else:
                self.ctx.term()  # blocks until queued parts reached their peers (or LINGER_MS passed)
        return NodeResult(self.name, self.failure is None, self.failure, self.summary(), time.perf_counter() - t0)


def run_nodes_in_threads(graph: Graph, nodes: list[str] | None = None,
                         timeout_s: float | None = None) -> dict[str, NodeResult]:
    """Run every node (or the named ones) of a flowgraph in this process, a thread each — for tests and for
    embedding qkdflow in another program. Edges between nodes still go over their ipc/tcp endpoints."""
    runners = {n: NodeRunner(graph, n) for n in (nodes or list(graph.nodes))}
    results: dict[str, NodeResult] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, runners[n].run(timeout_s=timeout_s)))
               for n in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
