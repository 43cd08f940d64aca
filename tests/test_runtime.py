"""The runtime: YAML validation, ZeroMQ edges, end of stream, failures, backpressure, CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zmq

from qkdflow.runtime import wire
from qkdflow.runtime.block import Frame, Tag
from qkdflow.runtime.graph import FlowgraphError, load_flowgraph
from qkdflow.runtime.scheduler import NodeRunner, run_nodes_in_threads
from qkdflow.runtime.transport import EdgeReceiver, EdgeSender

QKDFLOW = [sys.executable, "-m", "qkdflow.runtime.cli"]


def write(tmp_path, text, name="fg.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def errors_of(path, overrides=()):
    with pytest.raises(FlowgraphError) as ei:
        load_flowgraph(path, list(overrides))
    return ei.value.errors


# ---- YAML validation ------------------------------------------------------------------------
def test_every_error_class_reported_at_once_with_file_and_line(tmp_path):
    path = write(tmp_path, """\
        flowgraph: bad
        nodes:
          aau: {}
          du: {}
        blocks:
          src:  {type: slot_source, node: aau, frames: -1}
          g:    {type: null_sink, node: aau, gain: 2}
          b:    {type: nosuchblock, node: du}
          h:    {type: null_sink, node: du, delay_s: fast}
          d:    {type: copy, node: mars}
          e:    {type: copy, node: aau}
          a:    {type: copy, node: aau}
          c:    {type: null_sink, node: du}
        connections:
          - [e.nope, e.in]
          - [a.out, c.in]
        """)
    errs = errors_of(path)
    text = "\n".join(errs)
    assert all(e.startswith(path + ":") for e in errs), errs
    assert f"{path}:6: blocks.src.frames: must be >= 0" in text          # out of range
    assert f"{path}:7: blocks.g.gain: unknown parameter" in text          # unknown parameter
    assert f"{path}:8: blocks.b.type: unknown block type 'nosuchblock'" in text
    assert f"{path}:9: blocks.h.delay_s: must be a number" in text       # wrong type
    assert "blocks.d.node: unknown node 'mars'" in text
    assert "has no output port 'nope'" in text
    assert "blocks.e: required input port 'in' is not connected" in text
    assert "blocks.a: required input port 'in' is not connected" in text
    assert "edge a.out -> c.in goes from node aau to node du but has no endpoint" in text
    assert len(errs) >= 8


def test_duplicate_names_and_syntax_errors(tmp_path):
    dup = write(tmp_path, """\
        blocks:
          a: {type: slot_source}
          a: {type: null_sink}
        connections: []
        """)
    assert any(":3: a: duplicate name" in e for e in errors_of(dup))
    broken = write(tmp_path, "blocks: {a: [\n", "broken.yaml")
    (err,) = errors_of(broken)
    assert "YAML syntax error" in err and err.startswith(broken)


def test_dtype_mismatch_and_double_feed(tmp_path):
    path = write(tmp_path, """\
        blocks:
          w: {type: runtime_blocks:Watermark}
          s: {type: slot_source}
          lag: {type: runtime_blocks:LagSink}
          n: {type: null_sink}
        connections:
          - [s.out, lag.in]
          - [w.out, lag.in]
          - [w.out, n.in]
        """)
    text = "\n".join(errors_of(path))
    assert "lag.in is already fed by connections[0]" in text
    path2 = write(tmp_path, """\
        blocks:
          w: {type: runtime_blocks:Watermark}
          z: {type: zmq_sink, address: "tcp://127.0.0.1:1", item_type: float}
          lag: {type: runtime_blocks:LagSink}
          src: {type: runtime_blocks:Pinger}
        connections:
          - [w.out, lag.in]
          - [src.ping, lag.in]
        """, "b.yaml")
    text = "\n".join(errors_of(path2))
    assert "cannot connect a message port to a stream port" in text


def test_overrides_and_variables(tmp_path):
    path = write(tmp_path, """\
        variables: {n: 3}
        blocks:
          s: {type: slot_source, frames: "${n}", slots_per_frame: 8}
          k: {type: null_sink}
        connections: [[s.out, k.in]]
        """)
    g = load_flowgraph(path, ["n=5", "s.slots_per_frame=16"])
    assert g.blocks["s"].params == {"frames": 5, "slots_per_frame": 16}
    errs = errors_of(path, ["s.frames=many", "nosuch.x=1"])
    assert any("blocks.s.frames: must be an integer" in e for e in errs)
    assert any("-p nosuch.x=1: no such block" in e for e in errs)


def test_cli_user_error_is_one_line_per_problem_exit_2_no_traceback(tmp_path, cli_env):
    path = write(tmp_path, """\
        blocks:
          s: {type: slot_source, frames: 1.5}
        connections: []
        """)
    r = subprocess.run(QKDFLOW + ["run", path], capture_output=True, text=True, env=cli_env, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"{path}:2: blocks.s.frames: must be an integer" in r.stderr
    r = subprocess.run(QKDFLOW + ["check", str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                       env=cli_env, timeout=60)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


# ---- running ------------------------------------------------------------------------------------
def test_user_block_by_module_class_and_end_of_stream(tmp_path):
    out = tmp_path / "c.json"
    path = write(tmp_path, f"""\
        blocks:
          s: {{type: slot_source, frames: 7, slots_per_frame: 100}}
          a: {{type: copy}}
          c: {{type: runtime_blocks:Collect, path: "{out}"}}
        connections: [[s.out, a.in], [a.out, c.in]]
        """)
    res = NodeRunner(load_flowgraph(path), "main").run(timeout_s=30)
    assert res.ok, res.failure
    rec = json.loads(out.read_text())
    assert rec["ranges"] == [[i * 100, (i + 1) * 100, 100] for i in range(7)]
    assert rec["sum"] == sum(range(700))


def test_crashing_block_names_block_and_node(tmp_path, cli_env):
    path = write(tmp_path, """\
        blocks:
          s: {type: slot_source, frames: 1000000, slots_per_frame: 64}
          boom: {type: runtime_blocks:Crash, after: 5}
          k: {type: null_sink}
        connections: [[s.out, boom.in], [boom.out, k.in]]
        """)
    t0 = time.monotonic()
    r = subprocess.run(QKDFLOW + ["run", path], capture_output=True, text=True, env=cli_env, timeout=60)
    assert r.returncode == 1
    assert "node main, block boom: ZeroDivisionError: deliberate failure" in r.stderr
    assert "Traceback" not in r.stderr


def test_message_cycle_between_nodes_ends_cleanly(tmp_path, ports):
    base = ports(2)
    path = write(tmp_path, f"""\
        nodes:
          aau: {{port: {base}}}
          du: {{port: {base + 1}}}
        blocks:
          s: {{type: slot_source, node: aau, frames: 20, slots_per_frame: 10}}
          ping: {{type: runtime_blocks:Pinger, node: aau}}
          pong: {{type: runtime_blocks:Ponger, node: du}}
        connections:
          - [s.out, ping.in]
          - [ping.ping, pong.ping]
          - [pong.pong, ping.pong]
        """)
    g = load_flowgraph(path)
    results = run_nodes_in_threads(g, timeout_s=30)
    assert results["aau"].ok and results["du"].ok, (results["aau"].failure, results["du"].failure)
    assert results["aau"].blocks["ping"]["pongs"] == 20
    assert results["du"].blocks["pong"]["pings"] == 20


@pytest.mark.parametrize("scheduler", ["threads", "single"])
def test_a_peer_that_stops_answering_ends_the_run_after_peer_timeout(tmp_path, ports, scheduler):
    """An alive peer that never answers (stuck, or its connection stalled on a corrupted frame length: nothing for
    the liveness watchdog to see) ends the waiting node's run with a line naming the block, the wait and the peer
    (Block.awaiting_peer, node field peer_timeout_s); a slow peer that keeps answering does not."""
    base = ports(2)
    flow = """\
        nodes:
          aau: {{port: {p0}, peer_timeout_s: {timeout}, scheduler: {sched}}}
          du: {{port: {p1}}}
        blocks:
          s: {{type: slot_source, node: aau, frames: 20, slots_per_frame: 10}}
          ping: {{type: runtime_blocks:Pinger, node: aau}}
          pong: {{type: runtime_blocks:Ponger, node: du, mute_after: {mute}, delay_s: {delay}}}
        connections:
          - [s.out, ping.in]
          - [ping.ping, pong.ping]
          - [pong.pong, ping.pong]
        """
    path = write(tmp_path, flow.format(p0=base, p1=base + 1, timeout=0.5, sched=scheduler, mute=5, delay=0.0))
    results = run_nodes_in_threads(load_flowgraph(path), timeout_s=30)
    f = results["aau"].failure
    assert not results["aau"].ok and f.block == "ping", f
    assert f.reason.startswith("pinger: 15 ping(s) unanswered: nothing from peer node du for 0.5 s"), f.reason
    # 20 answers 0.1 s apart: the wait restarts with each one, so 2 s in all is not a 1 s silence
    path = write(tmp_path, flow.format(p0=base, p1=base + 1, timeout=1.0, sched=scheduler, mute=-1, delay=0.1),
                 name="slow.yaml")
    results = run_nodes_in_threads(load_flowgraph(path), timeout_s=30)
    assert results["aau"].ok and results["du"].ok, (results["aau"].failure, results["du"].failure)
    assert results["aau"].blocks["ping"]["pongs"] == 20


def test_peer_timeout_must_be_a_positive_number(tmp_path):
    path = write(tmp_path, """\
        nodes:
          aau: {peer_timeout_s: 0}
        blocks:
          s: {type: slot_source, node: aau, frames: 1}
          n: {type: null_sink, node: aau}
        connections:
          - [s.out, n.in]
        """)
    with pytest.raises(FlowgraphError,
                       match=r"nodes\.aau\.peer_timeout_s.*must be a positive number of seconds, got 0"):
        load_flowgraph(path)


def test_two_node_processes_over_tcp(tmp_path, ports, cli_env):
    base = ports(4)
    r = subprocess.run(QKDFLOW + ["run", "flowgraphs/passthrough.yaml", "--json", "-p", f"nodes.du.port={base}",
                                  "-p", f"nodes.aau.port={base + 2}", "-p", "src.frames=30"],
                       capture_output=True, text=True, env=cli_env, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"]
    assert summary["nodes"]["du"]["sink"]["items"] == 30 * 65536
    assert summary["nodes"]["aau"]["src"]["frames_out"] == 30


def test_killed_node_stops_the_run_and_leaves_no_process(tmp_path, ports, cli_env):
    base = ports(2)
    path = write(tmp_path, f"""\
        nodes:
          aau: {{port: {base}}}
          du: {{port: {base + 1}}}
        blocks:
          s: {{type: slot_source, node: aau, frames: 100000000, slots_per_frame: 1024}}
          k: {{type: null_sink, node: du, delay_s: 0.001}}
        connections: [[s.out, k.in]]
        """)
    proc = subprocess.Popen(QKDFLOW + ["run", path], stderr=subprocess.PIPE, text=True, env=cli_env)
    pid = None
    deadline = time.monotonic() + 30
    while pid is None and time.monotonic() < deadline:
        time.sleep(0.2)
        out = subprocess.run(["pgrep", "-f", f"{path} --child.*--node du"], capture_output=True, text=True).stdout
        pid = int(out.split()[0]) if out.strip() else None
    assert pid, "du node process did not start"
    time.sleep(0.5)
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "node du killed by signal 9 (SIGKILL)" in err
    time.sleep(0.3)
    left = subprocess.run(["pgrep", "-f", f"{path} --child"], capture_output=True, text=True).stdout
    assert not left.strip()


def test_backpressure_keeps_the_producer_close(tmp_path):
    path = write(tmp_path, """\
        blocks:
          w: {type: runtime_blocks:Watermark, frames: 40, frame_bytes: 1048576}
          lag: {type: runtime_blocks:LagSink, delay_s: 0.01}
        connections: [[w.out, lag.in, {queue_frames: 2}]]
        """)
    res = NodeRunner(load_flowgraph(path), "main").run(timeout_s=60)
    assert res.ok, res.failure
    rep = res.blocks["lag"]
    assert rep["consumed"] == 40                 # nothing dropped
    # in flight: 2 (send queue) + 2 (receive queue) + one being sent + one in the sink
    assert rep["max_lead"] <= 8, rep


# ---- the wire -------------------------------------------------------------------------------------
def test_sequence_gap_and_garbage_are_errors():
    import threading
    ctx = zmq.Context()
    stop = threading.Event()
    rx = EdgeReceiver(ctx, "inproc://t-seq", True, 10, np.dtype(np.int32), "t")
    tx = EdgeSender(ctx, "inproc://t-seq", False, 10, stop, with_dtype=False, label="t")
    f = Frame(0, 4, np.arange(4, dtype=np.int32), [Tag(2, "k", 1.5)], {"x": 1})
    tx.send_frame(f)
    kind, got = rx.recv()
    assert kind == wire.DATA and got.data.tolist() == [0, 1, 2, 3] and got.tags == [Tag(2, "k", 1.5)]
    tx.seq += 1  # a lost part
    tx.send_frame(f)
    with pytest.raises(wire.WireError, match="sequence gap: expected 1, got 2"):
        rx.recv()
    tx.sock.send_multipart([b"garbage"])
    with pytest.raises(wire.WireError, match="header too short"):
        rx.recv()
    tx.close(0)
    rx.close()
    ctx.term()


def test_message_codec_round_trip_keeps_arrays_and_bytes():
    msg = {"a": np.arange(5, dtype=np.uint16), "b": b"\x00\x01", "n": [1, {"c": np.float64(2.5)}], "s": "x"}
    parts = wire.encode_message(7, msg)
    kind, seq, _, _, trailer = wire.decode_header(parts[0])
    assert (kind, seq) == (wire.MESSAGE, 7)
    back = wire.decode_message(trailer, [memoryview(bytes(p)) for p in parts[1:]])
    assert back["a"].dtype == np.uint16 and back["a"].tolist() == [0, 1, 2, 3, 4]
    assert back["b"] == b"\x00\x01" and back["n"] == [1, {"c": 2.5}] and back["s"] == "x"
    with pytest.raises(wire.WireError, match="missing array part"):
        wire.decode_message(trailer, [])


# ---- authenticated classical channel ----------------------------------------------------------------
def _psk(tmp_path, n_bytes=65536, name="psk.bin"):
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(5).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return str(p)


def test_authenticated_message_edges_run_and_count_tags(tmp_path, ports):
    import threading
    base = ports(2)
    psk = _psk(tmp_path)
    path = write(tmp_path, f"""\
        nodes:
          aau: {{port: {base}, psk_file: "{psk}"}}
          du: {{port: {base + 1}, psk_file: "{psk}"}}
        blocks:
          s: {{type: slot_source, node: aau, frames: 30, slots_per_frame: 10}}
          ping: {{type: runtime_blocks:Pinger, node: aau}}
          pong: {{type: runtime_blocks:Ponger, node: du}}
        connections:
          - [s.out, ping.in]
          - [ping.ping, pong.ping]
          - [pong.pong, ping.pong]
        """)
    g = load_flowgraph(path)
    runners = {n: NodeRunner(g, n) for n in ("aau", "du")}
    results = {}
    ts = [threading.Thread(target=lambda n=n: results.__setitem__(n, runners[n].run(timeout_s=30))) for n in runners]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results["aau"].ok and results["du"].ok, (results["aau"].failure, results["du"].failure)
    # 30 pings + EOS each way, every one tagged and verified
    assert all(ea.tags == 31 for ea in runners["du"].auth.by_edge.values())
    assert results["du"].blocks["pong"]["pings"] == 30


def test_tampered_or_forged_message_is_rejected(tmp_path):
    import threading
    from qkdflow.distill.auth import ALICE_TO_BOB
    from qkdflow.distill.authstate import AuthState
    from qkdflow.runtime.auth import AuthFailure, EdgeAuth
    psk = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    stop = threading.Event()
    ctx = zmq.Context()
    a, b = AuthState(str(tmp_path / "a.sqlite"), psk), AuthState(str(tmp_path / "b.sqlite"), psk)
    rx = EdgeReceiver(ctx, "inproc://auth", True, 10, None, "a->b",
                      auth=EdgeAuth(b, False, ALICE_TO_BOB, "a->b", stop))
    tx = EdgeSender(ctx, "inproc://auth", False, 10, stop, True, "a->b",
                    auth=EdgeAuth(a, True, ALICE_TO_BOB, "a->b", stop))
    tx.send_message({"x": np.arange(3)})
    assert rx.recv()[1]["x"].tolist() == [0, 1, 2]
    parts = tx._tagged(wire.encode_message(tx.seq, {"x": np.arange(3)}))
    parts[1] = np.array([0, 1, 9])  # an altered payload with the old tag
    tx.sock.send_multipart(parts)
    with pytest.raises(AuthFailure, match="authentication failed"):
        rx.recv()
    tx.close(0); rx.close(); ctx.term(); a.close(); b.close()


def test_psk_problems_are_load_errors(tmp_path, cli_env, ports):
    base = ports(2)
    short = _psk(tmp_path, 16, "short.bin")
    path = write(tmp_path, f"""\
        nodes:
          aau: {{port: {base}, psk_file: "{short}"}}
          du: {{port: {base + 1}}}
        blocks:
          s: {{type: slot_source, node: aau, frames: 3}}
          ping: {{type: runtime_blocks:Pinger, node: aau}}
          pong: {{type: runtime_blocks:Ponger, node: du}}
        connections: [[s.out, ping.in], [ping.ping, pong.ping], [pong.pong, ping.pong]]
        """)
    errs = "\n".join(errors_of(path))
    assert "nodes.du.psk_file: message edge ping.ping -> pong.ping is authenticated at node aau" in errs
    r = subprocess.run(QKDFLOW + ["run", path, "-p", f"nodes.du.psk_file={short}", "--node", "du"],
                       capture_output=True, text=True, env=cli_env, timeout=60)
    assert r.returncode == 2 and "nodes.du.psk_file: pre-shared key file" in r.stderr and "bits" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_blocks_lists_every_type_and_graph_draws(tmp_path, cli_env):
    root = os.path.dirname(os.path.dirname(__file__))
    r = subprocess.run(QKDFLOW + ["blocks"], capture_output=True, text=True, env=cli_env, timeout=60, cwd=root)
    assert r.returncode == 0
    from qkdflow.runtime.graph import builtin_block_names
    names = builtin_block_names()
    assert len(names) > 30
    for n in names:  # every module defines exactly one block, listed with its doc line
        assert f"\n{n} [" in "\n" + r.stdout
    assert "param length_km: float [km] [0, ], default 20.0" in r.stdout
    png = tmp_path / "fg.png"
    r = subprocess.run(QKDFLOW + ["graph", "flowgraphs/fronthaul.yaml", "-o", str(png)], capture_output=True,
                       text=True, env=cli_env, timeout=60, cwd=root)
    assert r.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = subprocess.run(QKDFLOW + ["check", "flowgraphs/fronthaul.yaml"], capture_output=True, text=True,
                       env=cli_env, timeout=60, cwd=root)
    assert r.returncode == 0 and "19 blocks, 38 edges (12 between nodes)" in r.stdout


def test_curve_encrypted_edges_between_nodes(tmp_path, ports):
    import shutil
    import zmq.auth
    keys, rogue = tmp_path / "keys", tmp_path / "rogue"
    keys.mkdir()
    rogue.mkdir()
    for n in ("aau", "du"):
        zmq.auth.create_certificates(str(keys), n)
    base = ports(2)

    def graph(aau_dir, du_dir, name):
        return load_flowgraph(write(tmp_path, f"""\
            nodes:
              aau: {{port: {base}, curve_keys: "{aau_dir}"}}
              du: {{port: {base + 1}, curve_keys: "{du_dir}"}}
            blocks:
              s: {{type: slot_source, node: aau, frames: 20, slots_per_frame: 1000}}
              c: {{type: runtime_blocks:Collect, node: du}}
            connections: [[s.out, c.in]]
            """, name))

    res = run_nodes_in_threads(graph(keys, keys, "ok.yaml"), timeout_s=30)
    assert res["aau"].ok and res["du"].ok, (res["aau"].failure, res["du"].failure)
    assert res["du"].blocks["c"]["checksum"] == sum(range(20000))
    # an AAU with a key pair the DU does not know is refused by the DU's authenticator: nothing arrives
    pub, sec = zmq.auth.create_certificates(str(rogue), "aau")
    shutil.copy(keys / "du.key", rogue / "du.key")
    res = run_nodes_in_threads(graph(rogue, keys, "rogue.yaml"), timeout_s=3)
    assert not res["du"].ok and res["du"].blocks["c"]["n_frames"] == 0
    assert "timed out" in res["du"].failure.reason
    # curve_keys on one side only, or a missing certificate, are clear errors
    text = open(tmp_path / "ok.yaml").read().replace(f', curve_keys: "{keys}"', "", 1)
    assert any("nodes.aau.curve_keys: edge s.out -> c.in is CURVE-encrypted at node du" in e
               for e in errors_of(write(tmp_path, text, "half.yaml")))
    os.remove(keys / "aau.key")
    with pytest.raises(ValueError, match="missing certificate"):
        NodeRunner(graph(keys, keys, "missing.yaml"), "du")


@pytest.mark.parametrize("scheduler", ["threads", "single"])
def test_both_schedulers_run_chains_cycles_and_report_failures(tmp_path, ports, scheduler):
    base = ports(2)
    path = write(tmp_path, f"""\
        nodes:
          aau: {{port: {base}, scheduler: {scheduler}}}
          du: {{port: {base + 1}, scheduler: {scheduler}}}
        blocks:
          s: {{type: slot_source, node: aau, frames: 50, slots_per_frame: 100}}
          a: {{type: copy, node: aau}}
          ping: {{type: runtime_blocks:Pinger, node: du}}
          pong: {{type: runtime_blocks:Ponger, node: aau}}
        connections:
          - [s.out, a.in]
          - [a.out, ping.in]
          - [ping.ping, pong.ping]
          - [pong.pong, ping.pong]
        """)
    res = run_nodes_in_threads(load_flowgraph(path), timeout_s=30)
    assert res["aau"].ok and res["du"].ok, (res["aau"].failure, res["du"].failure)
    assert res["du"].blocks["ping"]["pongs"] == 50 and res["aau"].blocks["pong"]["pings"] == 50
    assert res["aau"].blocks["a"]["frames_in"] == 50
    crash = write(tmp_path, f"""\
        nodes: {{main: {{scheduler: {scheduler}}}}}
        blocks:
          s: {{type: slot_source, frames: 100, slots_per_frame: 10}}
          boom: {{type: runtime_blocks:Crash, after: 7}}
          k: {{type: null_sink}}
        connections: [[s.out, boom.in], [boom.out, k.in]]
        """, "crash.yaml")
    r = NodeRunner(load_flowgraph(crash), "main").run(timeout_s=30)
    assert not r.ok and r.failure.block == "boom" and "deliberate failure" in r.failure.reason
    assert r.blocks["k"]["frames_in"] <= 7


# ---- hot-path changes: exact in-node bound of the single-thread scheduler, part counts from peers ------------
from qkdflow.runtime.block import DONE, Block, Stream  # noqa: E402  (blocks for the flowgraphs below)
from qkdflow.runtime.params import Param  # noqa: E402


class Burst(Block):
    """A source returning its frames ``burst`` at a time (a list per ``work``): it outruns a one-frame sink."""

    params = (Param("frames", int, 60), Param("burst", int, 3))
    outputs = (Stream("out", np.int64),)
    produced = 0

    def start(self):
        self.n = 0
        Burst.produced = 0

    def work(self, ins):
        if self.n >= self.frames:
            return DONE
        out = []
        for _ in range(min(self.burst, self.frames - self.n)):
            out.append(Frame(self.n * 8, (self.n + 1) * 8, np.full(8, self.n, np.int64)))
            self.n += 1
        Burst.produced = self.n
        return {"out": out}


class LeadSink(Block):
    """Records the frame numbers it gets and how far Burst (same process) ever got ahead of it."""

    inputs = (Stream("in", np.int64),)

    def start(self):
        self.got, self.max_lead = [], 0

    def work(self, ins):
        f = ins["in"]
        self.got.append(int(f.data[0]))
        self.max_lead = max(self.max_lead, Burst.produced - len(self.got))

    def report(self):
        return {"max_lead": self.max_lead, "got": self.got}


@pytest.mark.parametrize("scheduler", ["threads", "single"])
def test_in_node_edge_stays_bounded_when_the_producer_outruns_the_consumer(tmp_path, scheduler):
    # The single-thread scheduler bounds an edge inside a node itself (sndhwm + rcvhwm frames in flight), not
    # ZeroMQ; a source making 3 frames per step for a sink taking 1 would otherwise run ~2/3 of the stream ahead.
    path = write(tmp_path, f"""\
        nodes: {{main: {{scheduler: {scheduler}}}}}
        blocks:
          b: {{type: test_runtime:Burst, frames: 90, burst: 3}}
          k: {{type: test_runtime:LeadSink}}
        connections: [[b.out, k.in, {{queue_frames: 2}}]]
        """)
    res = NodeRunner(load_flowgraph(path), "main").run(timeout_s=60)
    assert res.ok, res.failure
    rep = res.blocks["k"]
    assert rep["got"] == list(range(90))  # all, in order, nothing dropped
    # in flight on the edge (2 + 2) + a burst not yet sent (3) + the frame the sink is handed
    assert rep["max_lead"] <= 2 * 2 + 3 + 1, rep["max_lead"]
    assert res.blocks["b"]["frames_out"] == 90 and rep["frames_in"] == 90


def test_peer_data_frames_with_wrong_part_counts_or_sizes_are_errors(tmp_path):
    ctx = zmq.Context()
    addr = f"ipc://{tmp_path}/edge"  # an edge from another process: its part counts are checked
    rx = EdgeReceiver(ctx, addr, True, 10, np.dtype(np.int32), "p->q")
    rx.sock.setsockopt(zmq.RCVTIMEO, 10000)  # a bug here fails the test instead of hanging it
    raw = ctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(addr)

    def head(seq, start=0, stop=2):
        return wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.DATA, 0, seq, start, stop)

    small = np.arange(2, dtype=np.int32)
    big = np.arange(1 << 18, dtype=np.int32)  # 1 MiB: received zero-copy
    raw.send_multipart([head(0), small])
    kind, f = rx.recv()
    assert kind == wire.DATA and f.data.tolist() == [0, 1] and (f.start, f.stop) == (0, 2)
    raw.send_multipart([head(1, 2, 2 + big.size), big])
    assert np.array_equal(rx.recv()[1].data, big)
    raw.send_multipart([head(2), big, b"extra"])
    with pytest.raises(wire.WireError, match=r"edge p->q: data frame with 3 parts"):
        rx.recv()
    raw.send_multipart([head(2), small, b"extra", b"more"])  # the rest of the bad message was not left behind
    with pytest.raises(wire.WireError, match="data frame with 4 parts"):
        rx.recv()
    raw.send_multipart([head(2)])
    with pytest.raises(wire.WireError, match="data frame with 1 parts"):
        rx.recv()
    raw.send_multipart([head(3), b"abc"])
    with pytest.raises(wire.WireError, match="payload of 3 bytes is not a whole number of 4-byte items"):
        rx.recv()
    raw.close()
    rx.close()
    ctx.term()


class Spin(Block):
    """Passes frames through after burning ``cpu_ms`` of CPU on each (a busy loop: thread CPU, not sleep)."""

    params = (Param("cpu_ms", float, 5.0, low=0.0),)
    inputs = (Stream("in"),)
    outputs = (Stream("out"),)

    def work(self, ins):
        t_end = time.thread_time() + self.cpu_ms / 1000
        while time.thread_time() < t_end:
            pass
        return {"out": ins["in"]}


@pytest.mark.parametrize("scheduler", ["threads", "single"])
def test_block_cpu_time_is_reported_per_block_thread(tmp_path, scheduler):
    """Thread-per-block: each block's cpu_s is its own thread's CPU clock, so the busy block carries its 20 x 10 ms
    and the copy beside it far less. The single-thread scheduler cannot split one thread's clock by block: no cpu_s."""
    path = write(tmp_path, f"""\
        nodes: {{main: {{scheduler: {scheduler}}}}}
        blocks:
          s: {{type: slot_source, frames: 20, slots_per_frame: 10}}
          spin: {{type: test_runtime:Spin, cpu_ms: 10}}
          c: {{type: copy}}
          k: {{type: null_sink}}
        connections: [[s.out, spin.in], [spin.out, c.in], [c.out, k.in]]
        """)
    res = NodeRunner(load_flowgraph(path), "main").run(timeout_s=60)
    assert res.ok, res.failure
    if (os.environ.get("QKDFLOW_SCHEDULER") or scheduler) == "single":     # the variable overrides every node
        assert all("cpu_s" not in b for b in res.blocks.values())
        return
    spin, copy = res.blocks["spin"]["cpu_s"], res.blocks["c"]["cpu_s"]
    assert 0.2 <= spin <= res.wall_s and copy < spin / 2
