"""zmq_sink / zmq_source blocks against the gr-zeromq wire format, both directions."""
from __future__ import annotations

import struct
import textwrap
import threading

import numpy as np

from qkdflow.gr.sockets import GrStreamReceiver, GrStreamSender
from qkdflow.gr.wire import Tag as GrTag
from qkdflow.runtime.graph import load_flowgraph
from qkdflow.runtime.scheduler import NodeRunner


def run(tmp_path, text):
    p = tmp_path / "fg.yaml"
    p.write_text(textwrap.dedent(text))
    return NodeRunner(load_flowgraph(str(p)), "main").run(timeout_s=60)


def test_zmq_sink_sends_raw_native_float32_items(tmp_path, ports):
    port = ports(1)
    rx = GrStreamReceiver(f"tcp://127.0.0.1:{port}", np.float32, pattern="pull", bind=False)
    res = run(tmp_path, f"""\
        blocks:
          s: {{type: slot_source, frames: 3, slots_per_frame: 1000, dtype: float32}}
          z: {{type: zmq_sink, address: "tcp://127.0.0.1:{port}", item_type: float}}
        connections: [[s.out, z.in]]
        """)
    assert res.ok, res.failure
    got = rx.receive(max_items=3000, idle_timeout_ms=2000)
    rx.close()
    assert got.items.dtype == np.float32
    assert np.array_equal(got.items, np.arange(3000, dtype=np.float32))


def test_zmq_sink_raw_bytes_and_tag_header_exactly(tmp_path, ports):
    """The exact bytes: 19-byte header "<HBQQ" (0x5FF0, 1, offset, ntags) then raw items."""
    import zmq
    port = ports(1)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(f"tcp://127.0.0.1:{port}")
    res = run(tmp_path, f"""\
        blocks:
          s: {{type: slot_source, frames: 2, slots_per_frame: 4, dtype: int32}}
          z: {{type: zmq_sink, address: "tcp://127.0.0.1:{port}", item_type: int, pass_tags: true}}
        connections: [[s.out, z.in]]
        """)
    assert res.ok, res.failure
    m1, m2 = pull.recv(), pull.recv()
    pull.close(); ctx.term()
    assert m1 == struct.pack("<HBQQ", 0x5FF0, 1, 0, 0) + np.arange(4, dtype="<i4").tobytes()
    assert m2 == struct.pack("<HBQQ", 0x5FF0, 1, 4, 0) + np.arange(4, 8, dtype="<i4").tobytes()


def test_zmq_source_takes_gnu_radio_items_and_tags(tmp_path, ports):
    port = ports(1)
    tx = GrStreamSender(f"tcp://127.0.0.1:{port}", np.complex64, pattern="push", pass_tags=True, bind=True)
    items = (np.arange(500) + 1j * np.arange(500)).astype(np.complex64)

    def feed():
        for k in range(5):
            chunk = items[k * 100:(k + 1) * 100]
            tx.send(chunk, [GrTag(k * 100 + 7, "burst", k, "gr_peer")])

    t = threading.Thread(target=feed)
    t.start()
    res = run(tmp_path, f"""\
        blocks:
          z: {{type: zmq_source, address: "tcp://127.0.0.1:{port}", item_type: complex, pass_tags: true,
              item_count: 500, items_per_frame: 128}}
          c: {{type: runtime_blocks:Collect}}
        connections: [[z.out, c.in]]
        """)
    t.join()
    tx.close()
    assert res.ok, res.failure
    assert res.blocks["z"]["items"] == 500
    assert res.blocks["c"]["tags"] == 5
    # Collect sums int64-cast items: the real parts 0..499 (imaginary parts are dropped by the cast)
    assert res.blocks["c"]["checksum"] == sum(range(500))


def test_zmq_source_ends_on_idle_and_reports_silence(tmp_path, ports):
    port = ports(1)
    res = run(tmp_path, f"""\
        blocks:
          z: {{type: zmq_source, address: "tcp://127.0.0.1:{port}", first_item_timeout_s: 0.3}}
          c: {{type: runtime_blocks:Collect}}
        connections: [[z.out, c.in]]
        """)
    assert not res.ok
    assert res.failure.block == "z" and "no data from tcp://127.0.0.1" in res.failure.reason
