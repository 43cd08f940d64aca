"""Physical layer + key distillation as two nodes (aau, du) in threads, tcp on free ports, seeded."""
from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
import yaml

from qkdflow.distill.keystore import KeyStore
from qkdflow.distill.protocol import key_length
from qkdflow.runtime.graph import load_flowgraph
from qkdflow.runtime.scheduler import run_nodes_in_threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "flowgraphs", "distill_test.yaml")


def run(tmp_path, ports, *, eve: float | None = None, block_bits: int = 50_000, slots: float = 12e6,
        overrides: tuple = ()) -> tuple[dict, dict, str, str]:
    doc = yaml.safe_load(open(BASE))
    doc["variables"]["block_bits"] = block_bits
    doc["blocks"]["prep"]["total_slots"] = int(slots)
    if eve is not None:
        doc["blocks"]["eve"] = {"type": "intercept_resend", "node": "aau", "fraction": eve, "seed": 9}
        doc["connections"] = [c for c in doc["connections"] if c != ["fibre.out", "det.in"]]
        doc["connections"] += [["fibre.out", "eve.in"], ["eve.out", "det.in"]]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(doc))
    base = ports(12)
    sa, sd = str(tmp_path / "aau.sqlite"), str(tmp_path / "du.sqlite")
    g = load_flowgraph(str(path), [f"nodes.aau.port={base}", f"nodes.du.port={base + 6}",
                                   f"store_a.store_path={sa}", f"store_d.store_path={sd}", *overrides])
    res = run_nodes_in_threads(g, timeout_s=90)
    assert res["aau"].ok and res["du"].ok, (res["aau"].failure, res["du"].failure)
    return res["aau"].blocks, res["du"].blocks, sa, sd


def stored(path: str) -> dict[str, bytes]:
    con = sqlite3.connect(path)
    try:
        return dict(con.execute("SELECT block_id, key FROM blocks WHERE state = 'committed'").fetchall())
    finally:
        con.close()


def test_no_eve_identical_keys_report_and_closed_form(tmp_path, ports):
    aau, du, sa, sd = run(tmp_path, ports)
    rep = du["store_d"]
    json.dumps(rep)  # JSON-able
    ka, kd = stored(sa), stored(sd)
    assert len(ka) == rep["blocks_committed"] >= 2 and ka == kd  # same ids, same bits
    with KeyStore(sa) as a, KeyStore(sd) as d:  # ETSI 014 flow: AAU allocates, DU serves the same keys
        keys = a.take_keys(4, 256)
        d.accept_peer_keys([k.descriptor for k in keys])
        assert [k.key for k in d.get_by_ids([k.key_id for k in keys])] == [k.key for k in keys]
    for k in ("sifted_bits", "qber_test", "qber_key", "leak_ec_bits", "leak_verify_bits", "final_key_bits",
              "eps_sec", "eps_cor", "secure_key_rate_bps", "closed_form", "messages_per_block"):
        assert rep[k] is not None, k
    assert rep["qber_key"] < 0.03 and rep["eps_sec"] == 1e-10 and rep["eps_cor"] == 1e-12
    # the DU's announcements on the network: slot gaps (1-2 bytes each at these click rates) and packed bases,
    # not an int64 and a byte per click (9 bytes); the count covers every part, headers and tags included
    sd_ = du["sift_d"]
    assert 1.0 < sd_["net_bytes_out"] / sd_["clicks"] < 3.0, sd_
    assert "net_bytes_out" not in du["est_d"]                     # a block with no edge to another node
    assert rep["stored_bits"] == rep["final_key_bits"] - rep["blocks_committed"] * 1024
    assert rep["secure_key_rate_bps"] == pytest.approx(rep["final_key_bits"] / (12e6 / 1e9))
    cf = rep["closed_form"]
    assert "error" not in cf, cf
    per_block = np.mean([b["final_bits"] for b in rep["blocks"]])
    # the closed form (expected counts) and the run (one realisation) agree within the block's fluctuation
    assert abs(per_block - cf["final_bits_per_block"]) < 0.3 * cf["final_bits_per_block"]
    # every block's length is Lim 2014 with its own counts and the leak actually disclosed
    for b in rep["blocks"]:
        fk = key_length(b["n_x"], b["n_z"], b["m_z"], b["source"], 1e-10, 1e-12, b["leak_ec"] + b["leak_verify"])
        assert b["final_bits"] == int(fk.length)
    assert aau["store_a"]["blocks_committed"] == rep["blocks_committed"]


def test_full_intercept_resend_aborts_every_block(tmp_path, ports, capsys):
    aau, du, sa, sd = run(tmp_path, ports, eve=1.0)
    rep = du["store_d"]
    assert rep["blocks_committed"] == 0 and rep["blocks_aborted"] >= 2
    assert all("QBER" in a["reason"] for a in rep["aborts"])
    assert aau["store_a"]["blocks_aborted"] == rep["blocks_aborted"]
    assert stored(sa) == {} and stored(sd) == {}
    err = capsys.readouterr().err
    assert "[du:est_d] block 1 aborted: QBER" in err and "[aau:ec_a] block 1 aborted: QBER" in err


def test_partial_intercept_resend_shrinks_key_as_the_formula_says(tmp_path, ports):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, clean, _, _ = run(tmp_path / "a", ports, block_bits=100_000, slots=17e6)
    _, eve, _, _ = run(tmp_path / "b", ports, eve=0.1, block_bits=100_000, slots=17e6)
    rc, re_ = clean["store_d"], eve["store_d"]
    assert rc["blocks_committed"] >= 1 and re_["blocks_committed"] >= 1
    assert re_["qber_test"] > rc["qber_test"] + 0.01          # Eve's errors (~2.5 % at fraction 0.1)
    for rep in (rc, re_):
        for b in rep["blocks"]:
            fk = key_length(b["n_x"], b["n_z"], b["m_z"], b["source"], 1e-10, 1e-12,
                            b["leak_ec"] + b["leak_verify"])
            assert b["final_bits"] == int(fk.length) > 0
    mean_clean = np.mean([b["final_bits"] for b in rc["blocks"] if b["n_key"] == 100_000])
    mean_eve = np.mean([b["final_bits"] for b in re_["blocks"] if b["n_key"] == 100_000])
    assert mean_eve < 0.5 * mean_clean


def test_mismatched_method_between_nodes_stops_the_run(tmp_path, ports):
    with pytest.raises(AssertionError, match="method is 'cascade' at the AAU but 'ldpc' at the DU|"
                                             "method is 'ldpc' at the DU but 'cascade' at the AAU"):
        run(tmp_path, ports, slots=2e6, overrides=("ec_d.method=ldpc", "ec_d.ldpc_code_bits=256",
                                                  "ec_a.ldpc_code_bits=256"))


@pytest.mark.parametrize("method", ["cascade", "ldpc"])
def test_authenticated_channel_tags_each_exchange_once_and_keys_agree(tmp_path, ports, method):
    """With a pre-shared key on both nodes every classical message is authenticated; sifting's chunk/sifted,
    Cascade's request/reply and blind LDPC's reveal_request/reveals go with deferred tags (runtime.auth), so each
    block costs a handful of tags (pads) per direction and stage instead of one per message, and the keys agree."""
    psk = tmp_path / "psk.bin"
    psk.write_bytes(np.random.default_rng(5).integers(0, 256, 1 << 14, dtype=np.uint8).tobytes())
    extra = () if method == "cascade" else ("ec_a.method=ldpc", "ec_d.method=ldpc")
    aau, du, sa, sd = run(tmp_path, ports, overrides=(f"nodes.aau.psk_file={psk}", f"nodes.du.psk_file={psk}",
                                                      *extra))
    rep = du["store_d"]
    ka, kd = stored(sa), stored(sd)
    assert len(ka) == rep["blocks_committed"] >= 2 and ka == kd
    blocks = rep["blocks_committed"]
    for side, names in ((aau, ("sift_a", "ec_a")), (du, ("sift_d", "ec_d"))):
        for name in names:
            st = side[name]
            assert st["auth_deferred_out"] >= 2 * blocks, (name, st)        # the chatty exchanges (a chunk per frame,
            assert st["auth_tags_out"] <= 3 * blocks + 4, (name, st)        # a request per Cascade round), closed by
                                                                            # a tag or two per block
        assert all(st.get("auth_deferred_out", 0) == 0 for n, st in side.items() if n not in names)
