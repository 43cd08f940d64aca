"""The single-thread scheduler: every block of a node stepped in turn by one thread (``scheduler: single``).

Same edges (one ZeroMQ socket per edge), same semantics as the thread-per-block scheduler — frames aligned by
slot range, messages handled as they arrive, explicit end of stream, ``finished()`` for protocol blocks — but no
thread hand-offs or GIL contention: receives and sends never wait. A block whose output queue is full keeps its
parts pending and is not stepped again until they leave (backpressure); when no block can make progress the
thread polls every socket it waits on. An edge inside the node is bounded here, exactly, at ZeroMQ's
``sndhwm + rcvhwm`` (2 × ``queue_frames``) frames in flight, from the two ends' part counters: libzmq itself
would let a sender see its inproc peer's reads only about once a millisecond. Good for chains of light blocks;
a node whose blocks do heavy numpy work on two cores may prefer the default threads.
"""
from __future__ import annotations

import time
import traceback
from collections import deque
from time import perf_counter

import zmq

from . import wire
from .auth import AuthFailure, unauthenticated_note
from .block import DONE, Block, BlockError, Frame
from .scheduler import (BlockStats, NodeFailure, PeerWait, deliver, output_frames,  # scheduler loads us lazily
                        work_aligned)
from .transport import POLL_MS, EdgeReceiver, EdgeSender


class CoopBlock:
    """One block's state under the single-thread scheduler (``stats`` and ``block`` as ``BlockRunner``)."""

    def __init__(self, node, block: Block, in_edges: list, out_edges: list) -> None:
        self.node, self.block = node, block
        self.in_edges, self.out_edges = in_edges, out_edges
        self.stats = BlockStats()
        self.receivers: dict[int, EdgeReceiver] = {}
        self.senders: dict[str, list[EdgeSender]] = {}
        self.pending: deque = deque()
        self.by_edge = {e.index: e for e in in_edges}
        self.queues: dict[str, deque] = {p.name: deque() for p in block.stream_inputs()
                                         if any(e.dst_port == p.name for e in in_edges)}
        self.msg_edges = [e.index for e in in_edges if e.kind == "message"]
        self.pure_message = not block.stream_inputs() and not block.stream_outputs()
        self.source = not block.stream_inputs() and not self.pure_message
        self.source_done = not self.source
        self.streams_over = self.msg_eos_sent = self.done = self.started = False
        self.t_run = 0.0
        self.local_senders: dict[int, EdgeSender] = {}  # in-edge index -> its sender, for edges inside the node
        self.inputs: list[tuple] = []  # per in-edge (receiver, its stream queue or None, local sender or None, edge)
        stream_queues = list(self.queues.items())
        self.single_input = stream_queues[0] if len(stream_queues) == 1 else None  # (port, queue): the common case
        self.out_ports = {p.name for p in block.outputs}
        self.inside_edge_of: dict[EdgeSender, object] = {}  # senders on inproc edges -> their edge
        # sender -> (its receiver, in-flight limit) for edges inside the node: ZeroMQ's sndhwm + rcvhwm, kept here
        self.bounded: dict[EdgeSender, tuple[EdgeReceiver, int]] = {}

    # ---- set-up ----------------------------------------------------------------------------------
    def open(self) -> None:
        n = self.node
        for e in self.in_edges:
            self.receivers[e.index] = EdgeReceiver(n.ctx, e.address, True, e.queue_frames, e.dtype, e.label,
                                                   auth=n.auth.by_edge.get(e.index), curve=n.curve.server(e),
                                                   accept_deferred=bool(getattr(self.block, "peer_deferred_types", ())))

    def connect(self) -> None:
        n = self.node
        for e in self.out_edges:
            # An edge inside the node is bounded by this scheduler, exactly (``flush``), not by ZeroMQ: a sender
            # learns of its inproc peer's reads only when it processes commands, which libzmq throttles to about
            # once a millisecond, so a fast chain would stall (and raise zmq.Again) on a queue that is not full.
            inside = e.connect.startswith("inproc://")
            s = EdgeSender(n.ctx, e.connect, False, e.queue_frames, n.stop, with_dtype=e.dtype is None,
                           label=e.label, auth=n.auth.by_edge.get(e.index), curve=n.curve.client(e),
                           sndhwm=0 if inside else None)
            self.senders.setdefault(e.src_port, []).append(s)
            if inside:
                self.inside_edge_of[s] = e

    def prepare(self) -> None:
        """Once every block of the node is connected: what ``step`` reads per frame, without dict look-ups."""
        self.inputs = [(self.receivers[i], self.queues.get(e.dst_port) if e.kind == "stream" else None,
                        self.local_senders.get(i), e) for i, e in self.by_edge.items()]

    def start(self) -> None:
        self.block._emit = self._emit
        self.t_run = time.perf_counter()
        self.block.start()
        self.started = True

    def close(self, failing: bool) -> None:
        for r in self.receivers.values():
            r.close()
        for ss in self.senders.values():
            for s in ss:
                s.close(0 if failing else None)

    # ---- sending (never waits) -------------------------------------------------------------------
    def _emit(self, port: str, msg: dict) -> None:
        if self.block.port("out", port) is None:
            raise BlockError(f"emit on unknown output port {port!r}")
        if self.msg_eos_sent:
            raise BlockError(f"emit on {port!r} after the block said it had finished")
        for s in self.senders.get(port, ()):
            self.pending.append((s, s.message_parts(msg)))
            self.stats.messages_out += 1

    def _outputs(self, outs) -> None:
        if not outs:
            return
        st, pending = self.stats, self.pending
        for port, frames in outs.items():
            if type(frames) is not Frame:  # lists, None, wrong types: the shared checks
                for senders, frame in output_frames(self.block, self.senders, {port: frames}, st):
                    for s in senders:
                        pending.append((s, s.frame_parts(frame)))
                continue
            ss = self.senders.get(port)  # one frame on a port: the hot path, same checks inline
            if ss is None:
                if port not in self.out_ports:
                    raise BlockError(f"work returned a frame for unknown output port {port!r}")
            else:
                for s in ss:
                    pending.append((s, s.frame_parts(frames)))
            st.frames_out += 1
            st.items_out += len(frames.data)

    def _eos(self, message_ports: bool) -> None:
        ports = self.block.message_outputs() if message_ports else self.block.stream_outputs()
        for p in ports:
            for s in self.senders.get(p.name, ()):
                self.pending.append((s, s.eos_parts()))

    def flush(self) -> bool:
        moved = False
        pending, bounded = self.pending, self.bounded
        while pending:
            s, parts = pending[0]
            b = bounded.get(s)
            if b is not None:
                if s.sent - b[0].expect >= b[1]:  # the edge inside the node is full: its consumer must step first
                    return moved
            if not s.try_send(parts):
                return moved
            pending.popleft()
            moved = True
        return moved

    # ---- one step ----------------------------------------------------------------------------------
    def step(self) -> bool:
        """Do whatever can be done now without waiting; return whether anything happened."""
        blk, st = self.block, self.stats
        progressed = False
        if self.pending:
            progressed = self.flush()
            if self.pending:
                return progressed
        for r, q, local, e in self.inputs:  # take what has arrived (one frame per stream input at most)
            if r.ended or q:  # q: a stream input's queue (None on message edges), one frame at most
                continue
            if local is not None:  # an edge inside this node: we know what its producer sent
                if r.expect >= local.sent:
                    continue
            elif not r.ready():
                continue
            kind, obj = r.recv()
            progressed = True
            if kind == wire.DATA and q is not None:
                q.append(obj)
            else:
                deliver(blk, e, kind, obj, self.queues, st)  # messages, checks; EOS only marks the receiver ended
        if self.pending:
            return True
        if self.source and not self.source_done:
            t0 = perf_counter()
            out = blk.work({})
            st.work_s += perf_counter() - t0
            if out is DONE:
                self.source_done = True
            elif out:
                for f in out.values():
                    if isinstance(f, Frame):
                        st.slots += f.stop - f.start
                        break
                self._outputs(out)
            return True
        single = self.single_input
        if single is not None:
            q = single[1]
            if q:  # work_aligned for one stream input, inline (nothing to align)
                f = q.popleft()
                st.frames_in += 1
                st.slots += f.stop - f.start
                t0 = perf_counter()
                out = blk.work({single[0]: f})
                st.work_s += perf_counter() - t0
                if out is DONE:
                    raise BlockError("work returned DONE, which only sources may do")
                if out:
                    self._outputs(out)
                return True
        elif self.queues and all(self.queues.values()):
            self._outputs(work_aligned(blk, self.queues, st))
            return True
        ended = {self.by_edge[i].dst_port for i, r in self.receivers.items()
                 if r.ended and self.by_edge[i].kind == "stream"}
        if self.pure_message:
            inputs_over = all(self.receivers[i].ended for i in self.msg_edges)
        else:
            inputs_over = self.source or (self.queues.keys() <= ended and not any(self.queues.values()))
        if not self.streams_over and inputs_over:
            self.streams_over = True
            self._outputs(blk.end())
            self._eos(message_ports=False)
            progressed = True
        if self.streams_over and not self.msg_eos_sent and blk.finished():
            self._eos(message_ports=True)
            self.msg_eos_sent = True
            progressed = True
        if self.msg_eos_sent and not self.pending and all(self.receivers[i].ended for i in self.msg_edges):
            self.stats.run_s = time.perf_counter() - self.t_run
            self.done = True
            blk.stop()
            progressed = True
        elif (self.streams_over and not self.msg_eos_sent and not self.pending
              and all(self.receivers[i].ended for i in self.msg_edges)):
            raise BlockError("waiting for messages to finish its protocol, but every message input has ended")
        return progressed

    def waits(self) -> list[tuple[zmq.Socket, int]]:
        """What this block is waiting on, for the node's poll."""
        if self.done:
            return []
        if self.pending:
            s = self.pending[0][0]  # an edge inside the node frees up when its consumer steps: nothing to poll
            return [] if s in self.bounded else [(s.sock, zmq.POLLOUT)]
        return [(self.receivers[i].sock, zmq.POLLIN) for i, e in self.by_edge.items()
                if not self.receivers[i].ended and (e.kind == "message" or not self.queues.get(e.dst_port))]


def run_single(node, blocks: list[CoopBlock]) -> None:
    """The node's one scheduling thread: set up, step every block until all are done, tear down."""
    current = None
    try:
        for b in blocks:
            b.open()
        for b in blocks:
            b.connect()
        senders = {e.index: s for b in blocks for port, ss in b.senders.items()
                   for e, s in zip([e for e in b.out_edges if e.src_port == port], ss)}
        for b in blocks:
            b.local_senders = {i: senders[i] for i in b.by_edge if i in senders}
            b.prepare()
        receivers = {i: r for b in blocks for i, r in b.receivers.items()}
        for b in blocks:
            b.bounded = {s: (receivers[e.index], 2 * e.queue_frames) for s, e in b.inside_edge_of.items()}
        for b in blocks:
            current = b
            b.start()
        live, stop = list(blocks), node.stop
        waits = [(b, w) for b, w in ((b, PeerWait(node, b.block, b.in_edges, b.receivers)) for b in blocks) if w.active]
        next_check = 0.0
        while live and not stop.is_set():
            if waits and time.monotonic() >= next_check:  # (not per step: steps are ~10 us)
                next_check = time.monotonic() + POLL_MS / 1000
                for current, w in waits:
                    w.check()
            progressed = False
            for b in live:
                current = b
                if b.step():
                    progressed = True
            if progressed:
                if any(b.done for b in live):  # (a block is done only in a step that progressed)
                    live = [b for b in live if not b.done]
                continue
            poller = zmq.Poller()
            for b in live:
                for sock, ev in b.waits():
                    poller.register(sock, ev)
            poller.poll(POLL_MS)
    except (wire.WireError, AuthFailure) as e:
        node.fail(NodeFailure(node.name, current.block.name if current else "-", str(e)))
    except BlockError as e:
        node.fail(NodeFailure(node.name, current.block.name if current else "-",
                              str(e) + (unauthenticated_note(current.receivers.values()) if current else "")))
    except zmq.ZMQError as e:
        node.fail(NodeFailure(node.name, current.block.name if current else "-", f"edge socket: {e}"))
    except Exception as e:  # a bug or bad data inside a block: name it, keep the traceback for -v
        note = unauthenticated_note(current.receivers.values()) if current else ""
        node.fail(NodeFailure(node.name, current.block.name if current else "-", f"{type(e).__name__}: {e}{note}",
                              traceback.format_exc()))
    finally:
        failing = node.stop.is_set()
        for b in blocks:
            if b.started and not b.done:
                try:
                    b.block.stop()
                except Exception:
                    pass
            b.close(failing)
