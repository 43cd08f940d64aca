"""A recorded experiment replayed through flowgraphs/replay.yaml reaches the same QBER and key as the direct simulation.

Direct run: record.yaml's physical layer (seeded preparation -> laser -> modulator -> fibre on the AAU, detector on
the DU) feeding replay.yaml's own monitor and key-distillation blocks, two nodes in threads on free tcp ports, with
record.yaml's tag recorder writing the clicks as a PTU T2 recording (50 ps detector jitter, 1 ppm drift, 1 us time
offset, first sync 1000 slots in, so the assigner must find the Alice/Bob offset). Replay run: replay.yaml itself on
that recording. The same clicks must give the same sifting, the same public seeds (Cascade shuffles, squashing; the
Toeplitz and verification seeds are fixed here by -p, as they are OS entropy by default) and so the same key: every
per-block count, the key-basis QBER, the final length and the stored key bits agree exactly. A recording with one
click removed must not (the comparisons can fail).
"""
from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest
import yaml

from qkdflow.runtime.graph import load_flowgraph
from qkdflow.runtime.scheduler import run_nodes_in_threads
from qkdflow.timetag import PtuReader, write_ptu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPLAY = os.path.join(ROOT, "flowgraphs", "replay.yaml")
RECORD = os.path.join(ROOT, "flowgraphs", "record.yaml")
PSK = os.path.join(ROOT, "flowgraphs", "demo-psk.bin")
SYNC_START_SLOT = 1000
SEEDS = ("pa_a.seed=11", "ver_a.seed=12")     # OS entropy by default; fixed so two runs can agree bit for bit
PER_BLOCK = ("num", "n_key", "n_test", "n_x", "n_z", "m_z", "qber_test", "qber_key", "leak_ec", "leak_verify",
             "final_bits", "l_real", "first_slot", "last_slot", "source", "eps_sec", "eps_cor")
TOTALS = ("blocks_committed", "blocks_aborted", "sifted_bits", "qber_test", "qber_key", "leak_ec_bits",
          "leak_verify_bits", "final_key_bits", "stored_bits", "slots")


def _load(path: str) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _run_two_nodes(path: str, overrides: list[str], ports) -> tuple[dict, dict]:
    base = ports(20)
    g = load_flowgraph(path, [f"nodes.aau.port={base}", f"nodes.du.port={base + 10}", *overrides])
    res = run_nodes_in_threads(g, timeout_s=90)
    assert res["aau"].ok and res["du"].ok, (res["aau"].failure, res["du"].failure)
    return res["aau"].blocks, res["du"].blocks


def _direct_doc(rec_path: str, alice_path: str) -> dict:
    """record.yaml's physics + recorder in place of replay.yaml's tag_source/slot_assigner; distillation unchanged."""
    rep, rec = _load(REPLAY), _load(RECORD)
    blocks = {k: v for k, v in rep["blocks"].items() if k not in ("prep", "tags", "slots")}
    for name, node in (("prep", "aau"), ("laser", "aau"), ("mod", "aau"), ("fibre", "aau"), ("det", "du"),
                       ("rec", "du")):
        blocks[name] = {**rec["blocks"][name], "node": node}
    blocks["rec"].update(path=rec_path, alice_record=alice_path, sync_start_slot=SYNC_START_SLOT)
    conns = [[a.replace("slots.out", "det.out"), b] for a, b in rep["connections"] if not a.startswith("tags.")]
    conns += rec["connections"]
    return {"flowgraph": "replay-direct", "clock": rep["clock"], "variables": {**rec["variables"], **rep["variables"]},
            "nodes": rep["nodes"], "blocks": blocks, "connections": conns}


def _stored(path: str) -> list[tuple[str, bytes]]:
    """Committed blocks (id, key bytes) in commit order."""
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT block_id, key FROM blocks WHERE state = 'committed' "
                           "ORDER BY commit_order").fetchall()
    finally:
        con.close()


def _replay(d, name: str, tags: str, alice: str, ports) -> tuple[dict, dict, str, str]:
    ka, kd = str(d / f"{name}_aau.sqlite"), str(d / f"{name}_du.sqlite")
    aau, du = _run_two_nodes(REPLAY, [f"tags={tags}", f"alice={alice}", f"keys_aau={ka}", f"keys_du={kd}", *SEEDS],
                             ports)
    return aau, du, ka, kd


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import free_port_block
    d = tmp_path_factory.mktemp("replay_key")
    tags, alice = str(d / "rec.ptu"), str(d / "alice.npy")
    path = d / "direct.yaml"
    path.write_text(yaml.safe_dump(_direct_doc(tags, alice), sort_keys=False))
    ka, kd = str(d / "direct_aau.sqlite"), str(d / "direct_du.sqlite")
    direct = _run_two_nodes(str(path), [f"nodes.aau.psk_file={PSK}", f"nodes.du.psk_file={PSK}",
                                        f"keys_aau={ka}", f"keys_du={kd}", *SEEDS], free_port_block)
    replay = _replay(d, "replay", tags, alice, free_port_block)
    return d, (*direct, ka, kd), replay


def test_record_and_replay_defaults_agree():
    """record.yaml writes what replay.yaml reads by default, with the same source parameters and frames."""
    rv, pv = _load(RECORD)["variables"], _load(REPLAY)["variables"]
    for k in ("tags", "alice", "spf", "intensities", "probabilities", "basis_bias"):
        assert rv[k] == pv[k], k


def test_replay_recovers_every_click_and_the_link_counts(runs):
    _, (_, ddu, _, _), (_, rdu, _, _) = runs
    s = rdu["slots"]
    assert s["offset_slots"] == SYNC_START_SLOT and s["offset_z"] > 20
    assert s["outside_window"] == 0 and s["clicks_outside_record"] == 0 and s["dead_time_drops"] == 0
    assert abs(s["drift_ppm"] - 1.0) < 0.01
    assert s["clicks_out"] == ddu["det"]["clicks"] == ddu["rec"]["clicks"] > 100_000
    assert ddu["det"]["dark_clicks"] > 50 and ddu["det"]["double_clicks"] > 100   # squashing is exercised
    for k in ("slots", "counts", "gain", "qber", "sifted_z", "sifted_x", "qber_key_basis", "finite_key_bits"):
        assert rdu["mon"][k] == ddu["mon"][k], k


def test_replay_reaches_the_same_sifted_bits_qber_and_key(runs):
    _, (daau, ddu, _, _), (raau, rdu, _, _) = runs
    dr, rr = ddu["store_d"], rdu["store_d"]
    assert dr["blocks_committed"] >= 2 and dr["blocks_aborted"] == 0 and dr["final_key_bits"] > 10_000
    assert 0.002 < dr["qber_key"] < 0.03
    assert {k: rr[k] for k in TOTALS} == {k: dr[k] for k in TOTALS}
    assert [{k: b[k] for k in PER_BLOCK} for b in rr["blocks"]] == [{k: b[k] for k in PER_BLOCK} for b in dr["blocks"]]
    for k in ("final_key_bits", "stored_bits", "blocks_committed"):
        assert raau["store_a"][k] == daau["store_a"][k] == dr[k], k


def test_replay_stores_the_same_key_material(runs):
    _, (_, _, dka, dkd), (_, _, rka, rkd) = runs
    direct_a, direct_d, replay_a, replay_d = (_stored(p) for p in (dka, dkd, rka, rkd))
    assert len(direct_d) >= 2
    assert direct_a == direct_d and replay_a == replay_d          # AAU and DU hold the same ids and bits
    assert [k for _, k in replay_d] == [k for _, k in direct_d]   # block ids are fresh UUIDs; the bits are not
    assert len({k for _, k in direct_d}) == len(direct_d)


def test_one_dropped_click_changes_sifting_and_key(runs, ports):
    """Remove one detection (a Z-basis click in a Z-basis slot of the first key block): the replay must differ."""
    d, (_, ddu, _, dkd), _ = runs
    alice = str(d / "alice.npy")
    tags = PtuReader(str(d / "rec.ptu")).read_all()
    rec = np.load(alice, mmap_mode="r")
    t0 = _load(RECORD)["blocks"]["rec"]["time_offset_ps"]
    # early tags: drift (1 ppm) moves them < 0.1 ps, so slot = round((t - offset) / 1 ns) exactly
    t = tags["time_ps"]
    times, n = np.unique(t[tags["channel"] != 0], return_counts=True)
    single = np.isin(t, times[n == 1])                         # not part of a double or cross-basis click
    det = np.flatnonzero(np.isin(tags["channel"], (1, 2)) & single & (t < t0 + 200_000_000))
    slot = np.rint((t[det] - t0) / 1000.0).astype(np.int64)
    ok = (slot > 2 * SYNC_START_SLOT) & (np.asarray(rec["basis"])[slot] == 0)
    assert ok.any()
    victim = det[np.flatnonzero(ok)[0]]
    write_ptu(str(d / "dropped.ptu"), np.delete(tags, victim))
    _, du, _, kd = _replay(d, "dropped", str(d / "dropped.ptu"), alice, ports)
    assert du["slots"]["clicks_out"] == ddu["det"]["clicks"] - 1
    first = du["store_d"]["blocks"][0]
    assert first["last_slot"] != ddu["store_d"]["blocks"][0]["last_slot"]
    assert [k for _, k in _stored(kd)][0] != [k for _, k in _stored(dkd)][0]
