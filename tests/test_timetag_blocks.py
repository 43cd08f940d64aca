"""Time-tag blocks: tag_source (every format, through the runtime), tag_stream_source (ZeroMQ), slot_assigner
accounting, and bad input -> clear errors (load time: exit code 2; run time: a clean block failure)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from qkdflow.runtime.block import Block, Stream
from qkdflow.runtime.graph import FlowgraphError, load_flowgraph
from qkdflow.runtime.params import Param
from qkdflow.runtime.scheduler import NodeRunner
from qkdflow.streams import CLICK_DTYPE, PREP_DTYPE, TAG_DTYPE
from qkdflow.timetag import make_tags, write_csv_tags, write_ptu, write_raw_tags, write_swabian_dump
from qkdflow.timetag.ptu import RT_HYDRAHARP2_T2, RT_HYDRAHARP2_T3, T3_DTYPE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QKDFLOW = [sys.executable, "-m", "qkdflow.runtime.cli"]
PERIOD_PS = 1000


class Collect(Block):
    """Test sink: keep every frame's range and items; write them to ``path`` (.npz) at the end."""

    inputs = (Stream("in"),)
    params = (Param("path", str),)

    def start(self):
        self.ranges, self.items = [], []

    def work(self, ins):
        f = ins["in"]
        self.ranges.append((f.start, f.stop))
        self.items.append(f.data.copy())

    def stop(self):
        data = np.concatenate(self.items) if self.items else np.empty(0)
        np.savez(self.path, data=data, ranges=np.array(self.ranges, np.int64).reshape(-1, 2))


def write(tmp_path, text, name="fg.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def run(path):
    return NodeRunner(load_flowgraph(path), "main").run(timeout_s=60)


def synthetic_tags(n_slots=200_000, seed=3, sync_every=16, drift_ppm=0.0, offset_ps=5_000):
    """Sync on channel 0 every ``sync_every`` slots, clicks on channels 1..4 at random slots with small jitter."""
    rng = np.random.default_rng(seed)
    slots = np.sort(rng.choice(n_slots, n_slots // 20, replace=False))
    ch = rng.integers(1, 5, slots.size)
    t = slots * PERIOD_PS + np.rint(rng.normal(0, 20, slots.size)).astype(np.int64)
    st = np.arange(0, n_slots, sync_every) * PERIOD_PS
    tt = np.concatenate([t, st]).astype(np.float64)
    cc = np.concatenate([ch, np.zeros(st.size, np.int64)])
    tt = np.rint(tt * (1 + drift_ppm * 1e-6)).astype(np.int64) + offset_ps
    order = np.argsort(tt, kind="stable")
    return make_tags(tt[order], cc[order]), slots, ch


# ---- tag_source: every format round trip --------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["ptu_t2", "raw", "swabian", "csv"])
def test_tag_source_round_trip_in_bounded_frames(tmp_path, fmt):
    tags, _, _ = synthetic_tags(50_000)
    path = str(tmp_path / f"tags.{fmt}")
    {"ptu_t2": lambda: write_ptu(path, tags, RT_HYDRAHARP2_T2, 1e-12), "raw": lambda: write_raw_tags(path, tags),
     "swabian": lambda: write_swabian_dump(path, tags), "csv": lambda: write_csv_tags(path, tags)}[fmt]()
    out = tmp_path / "out.npz"
    fmt_line = "format: swabian, " if fmt == "swabian" else ""
    g = write(tmp_path, f"""\
        blocks:
          src: {{type: tag_source, path: "{path}", {fmt_line}chunk_records: 1000}}
          c: {{type: test_timetag_blocks:Collect, path: "{out}"}}
        connections: [[src.out, c.in]]
        """)
    res = run(g)
    assert res.ok, res.failure
    got = np.load(out)
    assert got["data"].dtype == TAG_DTYPE
    np.testing.assert_array_equal(got["data"], tags)
    r = got["ranges"]
    # frames cover consecutive tag-index ranges of at most chunk_records
    assert r[0, 0] == 0 and r[-1, 1] == tags.size and (r[1:, 0] == r[:-1, 1]).all()
    assert (r[:, 1] - r[:, 0]).max() <= 1000 and len(r) >= tags.size // 1000
    assert res.blocks["src"]["tags"] == tags.size


def test_tag_source_t3_with_exact_sync_period(tmp_path):
    rng = np.random.default_rng(5)
    t3 = np.zeros(3000, T3_DTYPE)
    t3["nsync"] = np.sort(rng.integers(0, 100_000, t3.size))
    t3["dtime"] = rng.integers(0, 16_000, t3.size)
    t3["channel"] = rng.integers(1, 5, t3.size)
    t3 = t3[np.lexsort((t3["dtime"], t3["nsync"]))]
    path = str(tmp_path / "t3.ptu")
    # header sync period deliberately off (a measured value); the block overrides it with the exact one
    write_ptu(path, t3, RT_HYDRAHARP2_T3, 16_001e-12, resolution_s=1e-12)
    out = tmp_path / "o.npz"
    g = write(tmp_path, f"""\
        blocks:
          src: {{type: tag_source, path: "{path}", t3_sync_period_ps: 16000}}
          c: {{type: test_timetag_blocks:Collect, path: "{out}"}}
        connections: [[src.out, c.in]]
        """)
    res = run(g)
    assert res.ok, res.failure
    got = np.load(out)["data"]
    np.testing.assert_array_equal(got["time_ps"], t3["nsync"] * 16_000 + t3["dtime"])
    np.testing.assert_array_equal(got["channel"], t3["channel"])


# ---- bad files ---------------------------------------------------------------------------------------------
def _source_graph(tmp_path, path, extra=""):
    return write(tmp_path, f"""\
        blocks:
          src: {{type: tag_source, path: "{path}"{extra}}}
          k: {{type: null_sink}}
        connections: [[src.out, k.in]]
        """)


def test_load_time_file_errors_name_file_and_record_and_exit_2(tmp_path, cli_env):
    tags, _, _ = synthetic_tags(20_000)
    raw = str(tmp_path / "cut.qtag")
    write_raw_tags(raw, tags)
    with open(raw, "r+b") as fh:   # cut the last record in half
        fh.truncate(os.path.getsize(raw) - 5)
    bad = str(tmp_path / "bad.ptu")
    with open(bad, "wb") as fh:
        fh.write(b"PQTTTX\0\0" + bytes(100))
    ptu = str(tmp_path / "short.ptu")
    write_ptu(ptu, tags, RT_HYDRAHARP2_T2, 1e-12)
    with open(ptu, "r+b") as fh:
        fh.truncate(os.path.getsize(ptu) - 40)
    for path, want, extra in ((raw, f"record {tags.size - 1}", ""), (bad, "not a PTU file: magic", ", format: ptu"),
                              (bad, "cannot detect the tag file format", ""), (ptu, "file truncated", "")):
        with pytest.raises(FlowgraphError) as ei:
            load_flowgraph(_source_graph(tmp_path, path, extra))
        (err,) = ei.value.errors
        assert "blocks.src.path" in err and path in err and want in err, err
    r = subprocess.run(QKDFLOW + ["run", _source_graph(tmp_path, raw)], capture_output=True, text=True,
                       env=cli_env, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{raw}: record {tags.size - 1}: file truncated" in r.stderr


def test_run_time_backwards_timestamp_is_a_clean_failure_naming_record(tmp_path, cli_env):
    tags, _, _ = synthetic_tags(20_000)
    tags["time_ps"][777] = tags["time_ps"][776] - 10   # goes backwards at record 777
    raw = str(tmp_path / "back.qtag")
    with open(raw, "wb") as fh:    # written by hand: the library writer refuses unsorted tags
        import struct
        fh.write(struct.pack("<8sHHI", b"QKDFTAG\0", 1, 12, 0))
        tags.tofile(fh)
    res = run(_source_graph(tmp_path, raw, ", chunk_records: 500"))
    assert not res.ok
    assert res.failure.block == "src"
    assert f"{raw}: record 777: timestamp goes backwards" in res.failure.reason
    r = subprocess.run(QKDFLOW + ["run", _source_graph(tmp_path, raw)], capture_output=True, text=True,
                       env=cli_env, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "record 777" in r.stderr


# ---- slot_assigner ------------------------------------------------------------------------------------------
def _assigner_graph(tmp_path, tag_path, params, name="a.yaml"):
    out = tmp_path / "clicks.npz"
    return write(tmp_path, f"""\
        blocks:
          src: {{type: tag_source, path: "{tag_path}", chunk_records: 4096}}
          slots: {{type: slot_assigner, {params}}}
          c: {{type: test_timetag_blocks:Collect, path: "{out}"}}
        connections: [[src.out, slots.in], [slots.out, c.in]]
        """, name), out


def test_assigner_known_offset_frames_window_and_dead_time(tmp_path):
    tags, slots, ch = synthetic_tags(200_000, drift_ppm=3.0)
    # two late detections (outside a +-200 ps window) and one within a 10 ns dead time of its predecessor
    extra = make_tags(np.array([1000 * PERIOD_PS + 400, 2000 * PERIOD_PS + 450, 2000 * PERIOD_PS + 455 + 5000]),
                      np.array([5, 5, 5]))
    extra["time_ps"] = np.rint(extra["time_ps"] * (1 + 3e-6)).astype(np.int64) + 5_000
    allt = np.concatenate([tags, extra])
    allt = allt[np.argsort(allt["time_ps"], kind="stable")]
    path = str(tmp_path / "t.qtag")
    write_raw_tags(path, allt)
    g, out = _assigner_graph(tmp_path, path, "channel_map: {1: [0, 0], 2: [0, 1], 3: [1, 0], 4: [1, 1], 5: [1, 1]}, "
                                            "offset_slots: 100, total_slots: 150000, slots_per_frame: 32768, "
                                            "window_ps: [-200, 200], dead_time_ps: {5: 10000}, epoch_syncs: 1024")
    res = run(g)
    assert res.ok, res.failure
    rep = res.blocks["slots"]
    got = np.load(out)
    r = got["ranges"]
    # exactly the preparation's frames: [k*32768, (k+1)*32768) clipped to total_slots, none missing
    assert [tuple(x) for x in r] == [(s, min(s + 32768, 150_000)) for s in range(0, 150_000, 32768)]
    c = got["data"]
    assert c.dtype == CLICK_DTYPE
    keep = slots + 100 < 150_000
    np.testing.assert_array_equal(c["slot"], slots[keep] + 100)
    code = 1 << (ch[keep] - 1)   # channel k -> detector bit k-1 (2*basis + bit)
    np.testing.assert_array_equal(c["mask"], code)
    np.testing.assert_array_equal(c["basis"], (ch[keep] >= 3).astype(np.uint8))
    assert rep["outside_window"] == 2 and rep["dead_time_drops"] == 1
    assert rep["clicks_outside_record"] == int((~keep).sum())
    assert rep["sync_events"] == 200_000 // 16
    assert abs(rep["drift_ppm"] - 3.0) < 0.01


def test_assigner_channel_map_naming_a_missing_channel_fails(tmp_path):
    tags, _, _ = synthetic_tags(50_000)
    path = str(tmp_path / "t.qtag")
    write_raw_tags(path, tags)
    g, _ = _assigner_graph(tmp_path, path, "channel_map: {1: [0, 0], 2: [0, 1], 3: [1, 0], 4: [1, 1], 7: [1, 1]}, "
                                           "offset_slots: 0, total_slots: 50000")
    res = run(g)
    assert not res.ok and res.failure.block == "slots"
    assert "channel(s) [7] have no tags" in res.failure.reason
    g2, _ = _assigner_graph(tmp_path, path, "channel_map: {1: [0, 0], 2: [0, 1], 3: [1, 0]}, offset_slots: 0, "
                                            "total_slots: 50000", "b.yaml")
    res = run(g2)
    assert not res.ok and "unmapped channel(s) [4]" in res.failure.reason and path in res.failure.reason


def test_assigner_clock_channel_without_events_fails(tmp_path):
    tags, _, _ = synthetic_tags(50_000)
    det_only = tags[tags["channel"] != 0]
    path = str(tmp_path / "nosync.qtag")
    write_raw_tags(path, det_only)
    g, _ = _assigner_graph(tmp_path, path, "offset_slots: 0, total_slots: 50000")
    res = run(g)
    assert not res.ok and res.failure.block == "slots"
    assert "sync channel 0: 0 events" in res.failure.reason


def test_assigner_load_time_parameter_errors(tmp_path):
    rec = str(tmp_path / "wrong.npy")
    np.save(rec, np.zeros(10, np.float32))
    g, _ = _assigner_graph(tmp_path, __file__, f'alice_record: "{rec}", channel_map: {{1: [0, 2]}}, '
                                               f'window_ps: [-600, 100]')
    with pytest.raises(FlowgraphError) as ei:
        load_flowgraph(g)
    text = "\n".join(ei.value.errors)
    assert "blocks.slots.channel_map" in text and "[basis, bit]" in text
    g, _ = _assigner_graph(tmp_path, __file__, f'alice_record: "{rec}", window_ps: [-600, 100]', "b.yaml")
    with pytest.raises(FlowgraphError) as ei:
        load_flowgraph(g)
    text = "\n".join(ei.value.errors)
    assert "blocks.slots.alice_record" in text and "PREP_DTYPE" in text
    assert "blocks.slots.window_ps" in text


def test_offset_search_refuses_an_unrelated_record(tmp_path):
    tags, slots, ch = synthetic_tags(100_000)
    path = str(tmp_path / "t.qtag")
    write_raw_tags(path, tags)
    rng = np.random.default_rng(9)
    rec = np.zeros(120_000, PREP_DTYPE)
    rec["bit"] = rng.integers(0, 2, rec.size)
    rp = str(tmp_path / "alice.npy")
    np.save(rp, rec)
    g, _ = _assigner_graph(tmp_path, path, f'alice_record: "{rp}", max_offset_slots: 5000')
    res = run(g)
    assert not res.ok and "no clear correlation peak" in res.failure.reason


# ---- recorder parameter checks -----------------------------------------------------------------------------
def test_recorder_rejects_t3_sync_period_beyond_dtime_range(tmp_path):
    g = write(tmp_path, """\
        blocks:
          prep: {type: preparation, total_slots: 100}
          laser: {type: laser}
          det: {type: detector}
          rec: {type: tag_recorder, path: /tmp/never.ptu, format: ptu_t3, slots_per_sync: 64, sync_channel: 1}
        connections: [[prep.out, laser.in], [laser.out, det.in], [prep.out, rec.prep], [det.out, rec.clicks]]
        """)
    with pytest.raises(FlowgraphError) as ei:
        load_flowgraph(g)
    assert any("blocks.rec.slots_per_sync" in e and "dtime range" in e for e in ei.value.errors), ei.value.errors


# ---- live stream over ZeroMQ ---------------------------------------------------------------------------------
def _publisher(path, address, **kw):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from tag_publisher import publish
    result = {}

    def go():
        try:
            result["n"] = publish(path, address, **kw)
        except Exception as e:  # surfaced by the test
            result["error"] = e
    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th, result


def test_live_stream_round_trip_and_end_marker(tmp_path, ports):
    tags, _, _ = synthetic_tags(60_000)
    path = str(tmp_path / "t.qtag")
    write_raw_tags(path, tags)
    address = f"tcp://127.0.0.1:{ports(1)}"
    th, pub = _publisher(path, address, batch_tags=1000)
    out = tmp_path / "o.npz"
    g = write(tmp_path, f"""\
        blocks:
          src: {{type: tag_stream_source, address: "{address}", stall_timeout_s: 20}}
          c: {{type: test_timetag_blocks:Collect, path: "{out}"}}
        connections: [[src.out, c.in]]
        """)
    res = run(g)
    th.join(10)
    assert res.ok, res.failure
    assert "error" not in pub and pub["n"] == -(-tags.size // 1000)
    got = np.load(out)
    np.testing.assert_array_equal(got["data"], tags)
    assert res.blocks["src"]["ended_marker"] == 1 and res.blocks["src"]["batches"] == pub["n"]


def test_live_stream_stall_is_reported_and_idle_end_is_clean(tmp_path, ports):
    tags, _, _ = synthetic_tags(20_000)
    path = str(tmp_path / "t.qtag")
    write_raw_tags(path, tags)
    for idle, expect_ok in ((0.0, False), (0.5, True)):
        address = f"tcp://127.0.0.1:{ports(1)}"
        th, pub = _publisher(path, address, batch_tags=500, pattern="push", stop_after_batches=3)
        g = write(tmp_path, f"""\
            blocks:
              src: {{type: tag_stream_source, address: "{address}", pattern: pull, stall_timeout_s: 1.5,
                     idle_timeout_s: {idle}}}
              k: {{type: null_sink}}
            connections: [[src.out, k.in]]
            """, f"s{idle}.yaml")
        res = run(g)
        th.join(10)
        assert res.ok is expect_ok, res.failure
        if expect_ok:
            assert res.blocks["src"]["tags"] == 1500 and res.blocks["src"]["ended_idle"] == 1
        else:
            assert res.failure.block == "src"
            assert "stream stalled: no tag batch after batch 2 for 1.5 s" in res.failure.reason
