"""Record -> replay: a seeded simulation is recorded as PTU T2, PTU T3 and raw tag files (50 ps jitter, 1 ppm drift,
dark counts, time offset, sync starting at an arbitrary slot); replaying each through tag_source -> slot_assigner must
give back the simulated clicks slot for slot (with 50 ps jitter in 1000 ps slots no detection can change slot:
500 ps = 10 sigma) and therefore identical per-intensity gains/QBER counts."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from qkdflow.runtime.graph import load_flowgraph
from qkdflow.runtime.scheduler import NodeRunner

SLOTS = 1 << 21
SPF = 1 << 19
CMAP = {1: [0, 0], 2: [0, 1], 3: [1, 0], 4: [1, 1]}
RECORDINGS = {  # name: (recorder params, assigner params, expected offset alice - bob)
    "t2": ({"format": "ptu_t2", "sync_start_slot": 1000, "drift_ppm": 1.0, "time_offset_ps": 1_000_000},
           {"clock": "sync"}, 1000),
    "raw": ({"format": "raw", "sync_start_slot": 37, "drift_ppm": -1.0, "time_offset_ps": 123_456,
             "sync_jitter_ps": 5.0}, {"clock": "sync"}, 37),
    # T3: syncs are counted, not recorded; Bob's slot = round(time / period) with time = nsync x 16 ns + dtime,
    # nsync = 1 + sync index, so Bob's slots run 16 ahead of Alice's
    "t3": ({"format": "ptu_t3", "sync_start_slot": 0, "drift_ppm": 1.0, "time_offset_ps": 0},
           {"clock": "nominal"}, -16),
}
#: replay name -> (recording, assigner params, expected offset or None when it depends on the first detection)
REPLAYS = {name: (name, ap, off) for name, (_, ap, off) in RECORDINGS.items()}
REPLAYS["raw_detections"] = ("raw", {"clock": "detections"}, None)   # no sync: clock from the detections alone


def _run(doc: dict, path) -> dict:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = NodeRunner(load_flowgraph(str(path)), "main").run(timeout_s=120)
    assert res.ok, res.failure
    return res.blocks


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    blocks = {
        "prep": {"type": "preparation", "seed": 7, "slots_per_frame": SPF, "total_slots": SLOTS},
        "laser": {"type": "laser"},
        "mod": {"type": "modulator", "state_prep_error": 0.01},
        "fibre": {"type": "fibre", "length_km": 10, "loss_db_per_km": 0.2, "misalignment": 0.01},
        "det": {"type": "detector", "efficiency": 0.2, "dark_count_per_gate": 2e-5, "jitter_ps": 50.0, "seed": 21},
        "sim": {"type": "test_timetag_blocks:Collect", "path": str(d / "sim.npz")},
        "mon": {"type": "mc_helpers:LinkCounter"},
    }
    conns = [["prep.out", "laser.in"], ["laser.out", "mod.in"], ["mod.out", "fibre.in"], ["fibre.out", "det.in"],
             ["det.out", "sim.in"], ["prep.out", "mon.prep"], ["det.out", "mon.clicks"]]
    for name, (rp, _, _) in RECORDINGS.items():
        blocks[f"rec_{name}"] = {"type": "tag_recorder", "path": str(d / f"{name}.tags"), "channel_map": CMAP,
                                 "slots_per_sync": 16, "seed": 5, **rp}
        conns += [["prep.out", f"rec_{name}.prep"], ["det.out", f"rec_{name}.clicks"]]
    blocks["rec_t2"]["alice_record"] = str(d / "alice.npy")
    rep = _run({"flowgraph": "record", "clock": {"rate_hz": 1.0e9}, "blocks": blocks, "connections": conns},
               d / "record.yaml")
    assert rep["det"]["dark_clicks"] > 50            # dark counts are part of what is recorded
    return d, rep, np.load(d / "sim.npz")["data"]


@pytest.mark.parametrize("name", list(REPLAYS))
def test_replay_recovers_simulated_clicks_and_gains(recorded, name):
    d, sim_rep, sim = recorded
    name, ap, offset = REPLAYS[name][0], REPLAYS[name][1], REPLAYS[name][2]
    alice = str(d / "alice.npy")
    rec = np.load(alice)
    assert rec.shape == (SLOTS,)
    src = {"type": "tag_source", "path": str(d / f"{name}.tags"), "chunk_records": 50_000}
    if name == "t3":
        src["t3_sync_period_ps"] = 16_000
    blocks = {
        "prep": {"type": "preparation", "record_file": alice, "slots_per_frame": SPF},
        "tags": src,
        "slots": {"type": "slot_assigner", "alice_record": alice, "slots_per_frame": SPF, "channel_map": CMAP,
                  "slots_per_sync": 16, "epoch_syncs": 8192, "window_ps": [-500, 500],
                  "offset_search_slots": 1 << 19, "max_offset_slots": 1 << 14, **ap},
        "got": {"type": "test_timetag_blocks:Collect", "path": str(d / f"replay_{name}.npz")},
        "mon": {"type": "mc_helpers:LinkCounter"},
    }
    conns = [["tags.out", "slots.in"], ["slots.out", "got.in"], ["prep.out", "mon.prep"], ["slots.out", "mon.clicks"]]
    rep = _run({"flowgraph": f"replay-{name}", "clock": {"rate_hz": 1.0e9}, "blocks": blocks, "connections": conns},
               d / f"replay_{name}.yaml")
    out = np.load(d / f"replay_{name}.npz")
    got = out["data"]
    assert [tuple(r) for r in out["ranges"]] == [(s, s + SPF) for s in range(0, SLOTS, SPF)]
    s = rep["slots"]
    assert s["offset_z"] > 20
    if offset is not None:
        assert s["offset_slots"] == offset
    assert s["outside_window"] == 0 and s["clicks_outside_record"] == 0
    np.testing.assert_array_equal(got["slot"], sim["slot"])
    np.testing.assert_array_equal(got["basis"], sim["basis"])
    np.testing.assert_array_equal(got["mask"], sim["mask"])
    if ap["clock"] != "nominal":
        assert abs(s["drift_ppm"] - RECORDINGS[name][0]["drift_ppm"]) < 0.01
    keys = ("slots_seen", "class_clicks", "class_matched", "class_errors", "class_doubles", "class_wrong_only")
    assert {k: rep["mon"][k] for k in keys} == {k: sim_rep["mon"][k] for k in keys}
    assert sim_rep["mon"]["class_clicks"][0] > 10_000


def test_shipped_record_and_replay_flowgraphs_run_end_to_end(tmp_path, cli_env, ports):
    """flowgraphs/record.yaml makes a recording that flowgraphs/replay.yaml replays via the CLI as two processes
    (aau, du): monitor and key distillation, the same key committed at both ends."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cli = [sys.executable, "-m", "qkdflow.runtime.cli", "run", "--json", "-q"]
    common = ["-p", f"tags={tmp_path / 'r.ptu'}", "-p", f"alice={tmp_path / 'a.npy'}"]
    # 5 x 2^20 slots hold ~63k sifted key-basis bits: one 5e4-bit block (the rest is below min_block_bits)
    r = subprocess.run(cli + ["flowgraphs/record.yaml", "-p", "slots=5242880"] + common, capture_output=True,
                       text=True, env=cli_env, timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout.strip().splitlines()[-1])["nodes"]["main"]
    base = ports(20)
    r = subprocess.run(cli + ["flowgraphs/replay.yaml", "-p", "spf=262144", "-p", f"nodes.aau.port={base}",
                              "-p", f"nodes.du.port={base + 10}", "-p", f"keys_aau={tmp_path / 'ka.sqlite'}",
                              "-p", f"keys_du={tmp_path / 'kd.sqlite'}"] + common,
                       capture_output=True, text=True, env=cli_env, timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr
    nodes = json.loads(r.stdout.strip().splitlines()[-1])["nodes"]
    du, aau = nodes["du"], nodes["aau"]
    assert du["slots"]["clicks_out"] == rec["det"]["clicks"] > 1000
    assert du["slots"]["frames_out"] == 20 and du["mon"]["frames_in"] == 40
    assert du["slots"]["offset_slots"] == 0 and abs(du["slots"]["drift_ppm"] - 1.0) < 0.02
    store = du["store_d"]
    assert store["blocks_committed"] == 1 and store["sifted_bits"] == 50_000 and store["qber_key"] < 0.03
    assert store["final_key_bits"] == aau["store_a"]["final_key_bits"] > 1024
