"""Encrypted fronthaul: AES-256-GCM round trip with rekeying at the same packet at both ends, tamper and replay
rejection, key-exhaustion policies."""
from __future__ import annotations

import os
import random
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest

from blocks.fronthaul_decrypt import FronthaulDecrypt
from blocks.fronthaul_encrypt import AAD_BYTES, KEYID_AT, META_BYTES, FronthaulEncrypt
from blocks.fronthaul_sink import FronthaulSink
from blocks.fronthaul_source import FronthaulSource
from qkdflow.distill.keystore import KeyBlockMeta, KeyStore
from qkdflow.kms import parse_key_id
from qkdflow.runtime.block import BlockError
from qkdflow.runtime.graph import load_flowgraph
from qkdflow.runtime.params import ParamError
from qkdflow.runtime.scheduler import NodeRunner

META = KeyBlockMeta(qber=0.02, leak_bits=100, eps_sec=1e-10, eps_cor=1e-12)


def add_blocks(paths_or_stores, n_blocks, block_bytes, seed):
    rnd = random.Random(seed)
    stores = [KeyStore(p) if isinstance(p, str) else p for p in paths_or_stores]
    for _ in range(n_blocks):
        bid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        key = bytes(rnd.getrandbits(8) for _ in range(block_bytes))
        for s in stores:
            s.stage(bid, key, META)
            s.commit(bid, confirmed=True)  # both ends hold it: deliverable
    for s, p in zip(stores, paths_or_stores):
        if isinstance(p, str):
            s.close()


@pytest.fixture
def stores(tmp_path):
    a, b = str(tmp_path / "aau.db"), str(tmp_path / "du.db")
    return a, b


def frames(n_packets, per_frame=16, packet_bytes=200, packet_rate_hz=1e5):
    src = FronthaulSource("src", packets=n_packets, packets_per_frame=per_frame, packet_bytes=packet_bytes,
                          packet_rate_hz=packet_rate_hz)
    src.start()
    out = []
    while True:
        r = src.work({})
        if not isinstance(r, dict):
            return out
        out.append(r["out"])


def run_blocks(blocks, fs):
    for b in blocks:
        b.start()
    outs = []
    try:
        for f in fs:
            for b in blocks:
                r = b.work({"in": f})
                if r is None:
                    break
                f = r["out"]
            else:
                outs.append(f)
    finally:
        for b in blocks:
            b.stop()
    return outs


def test_flowgraph_round_trip_rekeys_at_the_same_packet_at_both_ends(stores, tmp_path):
    a, b = stores
    add_blocks([a, b], 2, 64, seed=3)  # 4 keys of 256 bits
    fg = tmp_path / "fg.yaml"
    fg.write_text(textwrap.dedent(f"""\
        flowgraph: fronthaul-crypto
        clock: {{rate_hz: 1.0e9}}
        blocks:
          src: {{type: fronthaul_source, packets: 1000, packets_per_frame: 64, packet_bytes: 1500, packet_rate_hz: 1.0e5}}
          enc: {{type: fronthaul_encrypt, store_path: "{a}", rekey_packets: 300, rekey_interval_s: 0.0025}}
          dec: {{type: fronthaul_decrypt, store_path: "{b}"}}
          snk: {{type: fronthaul_sink}}
        connections: [[src.out, enc.in], [enc.out, dec.in], [dec.out, snk.in]]
        """))
    res = NodeRunner(load_flowgraph(str(fg)), "main").run(timeout_s=60)
    assert res.ok, res.failure
    enc, dec, snk = res.blocks["enc"], res.blocks["dec"], res.blocks["snk"]
    # packet interval 10 us: the 2.5 ms rule (250 packets) fires before the 300-packet rule
    assert [s for s, _ in enc["key_switches"]] == [0, 250, 500, 750]
    assert dec["key_switches"] == enc["key_switches"]
    assert len({k for _, k in enc["key_switches"]}) == 4
    assert snk["packets_ok"] == dec["packets_ok"] == 1000 and snk["packets_corrupt"] == 0
    assert snk["packets_missing"] == 0 and snk["packets_out_of_order"] == 0
    assert enc["key_bits_consumed"] == dec["key_bits_consumed"] == 1024
    sa, sb = KeyStore(a), KeyStore(b)
    try:
        assert sa.stats()["delivered_bits"] == sb.stats()["delivered_bits"] == 1024
        assert sa.available_keys(256) == sb.available_keys(256) == 0
    finally:
        sa.close()
        sb.close()


def test_packet_count_rekeying_and_ciphertext_hides_payload(stores):
    a, b = stores
    add_blocks([a, b], 1, 32 * 5, seed=4)
    fs = frames(100, per_frame=16)
    enc = FronthaulEncrypt("enc", store_path=a, rekey_packets=25, rekey_interval_s=0)
    dec = FronthaulDecrypt("dec", store_path=b)
    enc.start()
    try:
        cts = [enc.work({"in": f})["out"] for f in fs]
    finally:
        enc.stop()
    assert [s for s, _ in enc.switch_seqs] == [0, 25, 50, 75]
    ct = np.concatenate([f.data for f in cts])
    pt = np.concatenate([f.data for f in fs])
    assert not np.any(np.all(ct["ct"][:, :200] == pt["data"], axis=1))
    kid = [str(uuid.UUID(bytes=ct["hdr"][i, 16:32].tobytes())) for i in (0, 24, 25, 99)]
    assert kid[0] == kid[1] != kid[2] != kid[3]
    assert [parse_key_id(k).offset_bits for k in kid] == [0, 0, 256, 768]
    outs = run_blocks([dec], cts)
    got = np.concatenate([f.data for f in outs])
    assert np.array_equal(got, pt)
    assert dec.counters["packets_ok"] == 100 and dec.counters["keys_fetched"] == 4


def test_tampered_and_replayed_packets_are_rejected_and_counted(stores):
    a, b = stores
    add_blocks([a, b], 1, 64, seed=5)
    fs = frames(64, per_frame=64)
    enc = FronthaulEncrypt("enc", store_path=a, rekey_packets=0, rekey_interval_s=0)
    (ctf,) = run_blocks([enc], fs)
    tampered = ctf.data.copy()
    u8 = tampered.view(np.uint8).reshape(len(tampered), -1)
    u8[3, AAD_BYTES + 10] ^= 0x01          # ciphertext bit
    u8[7, -1] ^= 0x80                      # tag bit
    u8[11, 0] ^= 0x01                      # slot (authenticated metadata)
    u8[13, META_BYTES + 15] ^= 0x01        # packet number in the nonce
    u8[17, META_BYTES + 1] = 1             # flags byte
    u8[19, META_BYTES] = 2                 # header version
    u8[21, KEYID_AT] ^= 0xFF               # key id: names no key here
    dec = FronthaulDecrypt("dec", store_path=b)
    dec.start()
    try:
        out = dec.work({"in": ctf.with_data(tampered)})["out"]
        assert dec.counters["rejected_auth"] == 5
        assert dec.counters["rejected_malformed"] == 1 and dec.counters["rejected_unknown_key"] == 1
        bad = {3, 7, 11, 13, 17, 19, 21}
        assert out.data["seq"].tolist() == [i for i in range(64) if i not in bad]
        assert np.array_equal(out.data, fs[0].data[[i for i in range(64) if i not in bad]])
        # the genuine frame replayed: every PN is at or below the last accepted one (packet 63's)
        again = dec.work({"in": ctf})["out"]
        assert dec.counters["rejected_replay"] == 64 and len(again.data) == 0
    finally:
        dec.stop()
    assert dec.counters["packets_ok"] == 64 - len(bad)


def test_hold_waits_for_key_and_fails_after_timeout(stores):
    a, _ = stores
    add_blocks([a], 1, 32, seed=6)  # one key
    fs = frames(40, per_frame=40)
    store = KeyStore(a)
    enc = FronthaulEncrypt("enc", store_path=a, rekey_packets=20, rekey_interval_s=0, on_key_exhaustion="hold",
                           hold_timeout_s=0.3, key_poll_s=0.01)
    # the block shares this process's store object, so it must be opened through the block; close ours
    store.close()
    enc.start()
    try:
        with pytest.raises(BlockError, match="dry"):
            enc.work({"in": fs[0]})
        assert enc.counters["exhaustion_events"] == 1 and enc.counters["hold_s"] >= 0.3
    finally:
        enc.stop()


def test_hold_resumes_when_the_store_is_refilled(stores):
    a, _ = stores
    add_blocks([a], 1, 32, seed=7)
    fs = frames(40, per_frame=40)
    enc = FronthaulEncrypt("enc", store_path=a, rekey_packets=20, rekey_interval_s=0, on_key_exhaustion="hold",
                           hold_timeout_s=20, key_poll_s=0.005)
    enc.start()
    try:
        refill = threading.Timer(0.2, lambda: add_blocks([enc.store], 1, 32, seed=8))
        refill.start()
        t0 = time.monotonic()
        out = enc.work({"in": fs[0]})["out"]
        refill.join()
        assert [s for s, _ in enc.switch_seqs] == [0, 20]
        assert enc.counters["exhaustion_events"] == 1 and enc.counters["packets_on_reused_key"] == 0
        assert len(out.data) == 40 and not np.any(out.data["hdr"][:, 1])
    finally:
        enc.stop()


def test_reuse_last_and_alarm_keeps_traffic_flowing_flagged(stores):
    a, b = stores
    add_blocks([a, b], 1, 32, seed=9)  # a single key
    fs = frames(60, per_frame=20)
    enc = FronthaulEncrypt("enc", store_path=a, rekey_packets=10, rekey_interval_s=0,
                           on_key_exhaustion="reuse_last_and_alarm")
    dec = FronthaulDecrypt("dec", store_path=b)
    outs = run_blocks([enc, dec], fs)
    assert enc.counters["keys_used"] == 1 and enc.counters["exhaustion_events"] == 1
    assert enc.counters["packets_on_reused_key"] == 50
    assert dec.counters["packets_ok"] == 60 and dec.counters["packets_reused_key_flag"] == 50
    assert np.array_equal(np.concatenate([f.data for f in outs]), np.concatenate([f.data for f in fs]))


def test_sink_counts_corruption_and_loss():
    fs = frames(48, per_frame=16)
    snk = FronthaulSink("snk")
    snk.start()
    d = fs[0].data.copy()
    d["data"][5, 100] ^= 1
    snk.work({"in": fs[0].with_data(d)})
    snk.work({"in": fs[2]})  # frame 1 lost
    assert snk.counters["packets_ok"] == 31 and snk.counters["packets_corrupt"] == 1
    assert snk.report()["packets_missing"] == 16


def test_bad_parameters_are_rejected():
    with pytest.raises(ParamError):
        FronthaulSource("s", packet_bytes=1501)
    with pytest.raises(ParamError):
        FronthaulEncrypt("e", store_path="x", on_key_exhaustion="drop")
    with pytest.raises(ParamError):
        FronthaulEncrypt("e")  # store_path is required
    assert FronthaulEncrypt("e", store_path="x", sae_id="a", peer_sae_id="a").validate()


def _half_confirmed(a, b, seed):
    """One block confirmed at the AAU's store (a) and committed but unconfirmed at the DU's (b): "done" in flight."""
    rnd = random.Random(seed)
    bid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
    key = rnd.randbytes(64)
    sa, sb = KeyStore(a, owner=True), KeyStore(b, owner=True)
    for s in (sa, sb):
        s.stage(bid, key, META)
    sb.commit(bid)
    sa.commit(bid, confirmed=True)
    sa.close()
    return bid, sb


def test_decrypt_holds_for_a_key_whose_block_is_confirmed_a_moment_later(stores):
    a, b = stores
    bid, owner_b = _half_confirmed(a, b, seed=8)
    fs = frames(32, per_frame=16)
    (c1, c2) = run_blocks([FronthaulEncrypt("enc", store_path=a, rekey_packets=0, rekey_interval_s=0)], fs)
    dec = FronthaulDecrypt("dec", store_path=b, confirm_wait_s=60.0, key_poll_s=0.002)
    def done_arrives():  # the DU's keystore block gets "done" while the decryptor is holding for it
        while dec.counters.get("confirm_waits", 0) == 0:
            time.sleep(0.001)
        owner_b.confirm(bid)

    confirmer = threading.Thread(target=done_arrives, daemon=True)
    dec.start()
    try:
        confirmer.start()
        outs = [dec.work({"in": c})["out"] for c in (c1, c2)]
    finally:
        confirmer.join()
        dec.stop()
        owner_b.close()
    assert np.array_equal(np.concatenate([f.data for f in outs]), np.concatenate([f.data for f in fs]))
    assert dec.counters["confirm_waits"] == 1 and dec.counters["packets_ok"] == 32
    assert dec.counters["rejected_unconfirmed_key"] == dec.counters["rejected_unknown_key"] == 0


def test_decrypt_rejects_while_a_block_stays_unconfirmed_and_retries_later(stores):
    a, b = stores
    bid, owner_b = _half_confirmed(a, b, seed=9)
    fs = frames(32, per_frame=16)
    (c1, c2) = run_blocks([FronthaulEncrypt("enc", store_path=a, rekey_packets=0, rekey_interval_s=0)], fs)
    dec = FronthaulDecrypt("dec", store_path=b, confirm_wait_s=0.01, key_poll_s=0.002)
    dec.start()
    try:
        first = dec.work({"in": c1})["out"]
        assert len(first.data) == 0 and dec.counters["rejected_unconfirmed_key"] == 16
        assert owner_b.stats()["delivered_keys"] == owner_b.stats()["reserved_keys"] == 0  # nothing burnt
        owner_b.confirm(bid)  # e.g. the start-up reconciliation after the AAU came back
        second = dec.work({"in": c2})["out"]
    finally:
        dec.stop()
    assert np.array_equal(second.data, fs[1].data) and dec.counters["packets_ok"] == 16
    assert owner_b.stats()["delivered_keys"] == 1
    owner_b.close()
