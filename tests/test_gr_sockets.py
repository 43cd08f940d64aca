"""gr-zeromq-style sockets: sender/receiver pairs over tcp://127.0.0.1 and ipc://."""
from __future__ import annotations

import numpy as np
import pytest
import zmq

from qkdflow.gr.sockets import (
    STOP_COUNT, STOP_IDLE, GrStreamReceiver, GrStreamSender, open_gr_socket,
)
from qkdflow.gr.wire import Tag, WireError, gr_item_dtype

TCP_ANY = "tcp://127.0.0.1:*"  # bind to a random free port; .endpoint tells which
WAIT_MS = 5000  # generous upper bound for local delivery; tests never assert on timing


def _close(sock: zmq.Socket) -> None:
    ctx = sock.context
    sock.close(0)
    ctx.term()


def test_push_pull_tcp_tags_split_across_receives():
    with GrStreamSender(TCP_ANY, np.float32, pass_tags=True) as tx, \
            GrStreamReceiver(tx.endpoint, np.float32, pass_tags=True) as rx:
        assert tx.endpoint.startswith("tcp://127.0.0.1:") and not tx.endpoint.endswith("*")
        tx.send(np.arange(10, dtype=np.float32), [Tag(0, "start", 0), Tag(7, "mark", 7, "src")])
        tx.send(np.arange(10, 25, dtype=np.float32), [Tag(12, "mark", 12)])
        tx.send(np.arange(25, 30, dtype=np.float32), [Tag(29, "end", True)])
        assert tx.nitems_sent == 30
        first = rx.receive(max_items=12, idle_timeout_ms=WAIT_MS)
        assert first.stopped == STOP_COUNT
        assert first.items.tolist() == list(range(12))
        assert [(t.offset, t.key, t.srcid) for t in first.tags] == [(0, "start", False), (7, "mark", "src")]
        second = rx.receive(max_items=18, idle_timeout_ms=WAIT_MS)  # 13 pending from message 2, then message 3
        assert second.stopped == STOP_COUNT
        assert second.items.tolist() == list(range(12, 30))
        assert [(t.offset, t.key) for t in second.tags] == [(12, "mark"), (29, "end")]
        assert rx.nitems_received == 30
        third = rx.receive(idle_timeout_ms=50)
        assert third.stopped == STOP_IDLE and third.items.shape == (0,) and third.tags == []


def test_receiver_rebases_tags_to_its_own_count():
    # A sender that restarts its count (second sender from 0) still yields monotone receiver offsets.
    with GrStreamReceiver(TCP_ANY, np.int16, pass_tags=True, bind=True) as rx:
        for _ in range(2):
            with GrStreamSender(rx.endpoint, np.int16, pass_tags=True, bind=False) as tx:
                tx.send(np.ones(5, np.int16), [Tag(3, "k", 1)])
            got = rx.receive(max_items=5, idle_timeout_ms=WAIT_MS)
            assert got.stopped == STOP_COUNT
        assert rx.nitems_received == 10
        assert got.tags[0].offset == 8  # 5 earlier items + local offset 3


def test_push_pull_ipc_vlen_complex(tmp_path):
    address = f"ipc://{tmp_path}/gr.sock"
    dt = gr_item_dtype("complex", 4)
    rng = np.random.default_rng(7)
    rows = (rng.standard_normal((50, 4)) + 1j * rng.standard_normal((50, 4))).astype(np.complex64)
    with GrStreamSender(address, dt) as tx, GrStreamReceiver(address, dt) as rx:
        tx.send(rows[:20])
        tx.send(rows[20:])
        got = rx.receive(max_items=50, idle_timeout_ms=WAIT_MS)
        assert got.stopped == STOP_COUNT and got.items.shape == (50, 4)
        assert np.array_equal(got.items, rows)
        assert got.items.flags.writeable


def test_pub_sub_with_key_prefix():
    with GrStreamSender(TCP_ANY, np.int32, pattern="pub", key="chan-1", pass_tags=True) as tx, \
            GrStreamReceiver(tx.endpoint, np.int32, pattern="sub", key="chan", pass_tags=True) as rx, \
            GrStreamReceiver(tx.endpoint, np.int32, pattern="sub", key="other", pass_tags=True) as deaf:
        assert tx.wait_for_subscriber(WAIT_MS)  # slow joiner: wait before the first send
        tx.send(np.arange(6, dtype=np.int32), [Tag(2, "k", 2)])
        got = rx.receive(max_items=6, idle_timeout_ms=WAIT_MS)
        assert got.items.tolist() == list(range(6)) and got.tags[0].offset == 2
        assert deaf.receive(idle_timeout_ms=100).items.size == 0  # prefix "other" does not match


def test_keyed_sub_drops_and_counts_single_frame_messages():
    with GrStreamSender(TCP_ANY, np.uint8, pattern="pub") as tx, \
            GrStreamReceiver(tx.endpoint, np.uint8, pattern="sub", key="ab") as rx:
        assert tx.wait_for_subscriber(WAIT_MS, topic=b"abc")
        tx.send(np.frombuffer(b"abc", np.uint8))  # single frame that the prefix "ab" matches
        got = rx.receive(idle_timeout_ms=300)
        assert got.items.size == 0 and rx.dropped_messages == 1


def test_unkeyed_sub_rejects_keyed_pub():
    with GrStreamSender(TCP_ANY, np.uint8, pattern="pub", key="k") as tx, \
            GrStreamReceiver(tx.endpoint, np.uint8, pattern="sub") as rx:
        assert tx.wait_for_subscriber(WAIT_MS)
        tx.send(np.zeros(4, np.uint8))
        with pytest.raises(WireError, match="unkeyed"):
            rx.receive(idle_timeout_ms=WAIT_MS)


def test_pass_tags_mismatch_is_reported():
    with GrStreamSender(TCP_ANY, np.float32) as tx, \
            GrStreamReceiver(tx.endpoint, np.float32, pass_tags=True) as rx:
        tx.send(np.zeros(8, np.float32))
        with pytest.raises(WireError, match="magic does not match"):
            rx.receive(idle_timeout_ms=WAIT_MS)


def test_wait_for_subscriber_times_out_without_one():
    with GrStreamSender(TCP_ANY, np.float32, pattern="pub", key="x") as tx:
        assert tx.wait_for_subscriber(20) is False
    with GrStreamSender(TCP_ANY, np.float32) as tx:
        with pytest.raises(ValueError, match="pub"):
            tx.wait_for_subscriber(10)


def test_send_timeout_without_peer():
    with GrStreamSender(TCP_ANY, np.float32, send_timeout_ms=20) as tx:
        with pytest.raises(TimeoutError):
            tx.send(np.zeros(3, np.float32))
        assert tx.nitems_sent == 0


def test_idle_receive_without_sender_has_item_shape():
    with GrStreamReceiver(TCP_ANY, gr_item_dtype("short", 3), bind=True) as rx:
        got = rx.receive(max_items=10, idle_timeout_ms=10)
        assert got.stopped == STOP_IDLE and got.items.shape == (0, 3) and got.items.dtype == np.int16
        assert rx.receive(max_items=0).stopped == STOP_COUNT


def test_open_gr_socket_options_and_defaults():
    sink = open_gr_socket("push", TCP_ANY, hwm=10)
    try:
        assert sink.getsockopt(zmq.SNDHWM) == 10 and sink.getsockopt(zmq.LINGER) == 1000
        endpoint = sink.getsockopt(zmq.LAST_ENDPOINT).decode()
        with pytest.raises(zmq.ZMQError):  # the sink bound that port by default
            _close(open_gr_socket("push", endpoint))
        source = open_gr_socket("pull", endpoint, linger_ms=0)  # sources connect by default
        assert source.getsockopt(zmq.RCVHWM) == 1000 and source.getsockopt(zmq.LINGER) == 0  # hwm=-1: ZMQ default
        _close(source)
    finally:
        _close(sink)
    with pytest.raises(zmq.ZMQError):  # a connecting source cannot use a wildcard port
        open_gr_socket("pull", TCP_ANY)
    bound = open_gr_socket("pull", TCP_ANY, bind=True, hwm=3)
    assert bound.getsockopt(zmq.RCVHWM) == 3
    _close(bound)
    sub = open_gr_socket("sub", "tcp://127.0.0.1:1", key="k")
    _close(sub)


@pytest.mark.parametrize("kwargs,match", [
    ({"kind": "dealer", "address": TCP_ANY}, "kind"),
    ({"kind": "push", "address": "127.0.0.1:5555"}, "address"),
    ({"kind": "push", "address": "http://x"}, "address"),
    ({"kind": "push", "address": TCP_ANY, "hwm": -2}, "hwm"),
    ({"kind": "push", "address": TCP_ANY, "linger_ms": 1.5}, "linger_ms"),
])
def test_open_gr_socket_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        open_gr_socket(**kwargs)


def test_sender_receiver_reject_bad_arguments():
    with pytest.raises(ValueError, match="pattern"):
        GrStreamSender(TCP_ANY, np.float32, pattern="rep")
    with pytest.raises(ValueError, match="key"):
        GrStreamSender(TCP_ANY, np.float32, key="k")
    with pytest.raises(ValueError, match="pattern"):
        GrStreamReceiver(TCP_ANY, np.float32, pattern="push")
    with pytest.raises(ValueError, match="dtype"):
        GrStreamReceiver(TCP_ANY, object, bind=True)
    with GrStreamSender(TCP_ANY, np.float32, send_timeout_ms=0) as tx:
        with pytest.raises(ValueError, match="items"):
            tx.send(np.zeros(3, np.float64))
        with pytest.raises(ValueError, match="items"):
            tx.send(np.zeros((3, 2), np.float32))
        with pytest.raises(ValueError, match="pass_tags"):
            tx.send(np.zeros(3, np.float32), [Tag(0, "k", 1)])
    with GrStreamReceiver(TCP_ANY, np.float32, bind=True) as rx:
        with pytest.raises(ValueError, match="max_items"):
            rx.receive(max_items=-1)
        with pytest.raises(ValueError, match="idle_timeout_ms"):
            rx.receive(idle_timeout_ms=None)
