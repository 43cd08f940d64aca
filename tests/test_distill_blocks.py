"""Key-distillation block halves driven in-process: each AAU/DU pair exchanges its peer messages through a FIFO."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocks.amplify_aau import AmplifyAau
from blocks.amplify_du import AmplifyDu
from blocks.estimate_du import EstimateDu
from blocks.reconcile_aau import ReconcileAau
from blocks.reconcile_du import ReconcileDu
from blocks.sift_aau import SiftAau
from blocks.sift_du import SiftDu, squash
from blocks.verify_aau import VerifyAau
from blocks.verify_du import VerifyDu
from qkdflow import prng
from qkdflow.distill import cascade
from qkdflow.distill.protocol import (ProtocolError, decode_slots, encode_slots, envelope, key_length, pack_bits,
                                      pack_crumbs, unpack_bits, unpack_crumbs)
from qkdflow.distill.toeplitz import toeplitz_hash
from qkdflow.runtime import wire
from qkdflow.runtime.block import BlockError, Frame
from qkdflow.streams import CLICK_DTYPE, PREP_DTYPE

SOURCE = {"intensities": [0.6, 0.2, 0.0], "probabilities": [0.15, 0.55, 0.30], "basis_bias": 0.7}


class Pair:
    """Wire an AAU half and a DU half together: peer messages go through one FIFO, other ports are recorded."""

    def __init__(self, aau, du):
        self.aau, self.du = aau, du
        self.q: deque = deque()
        self.out = {"aau": [], "du": []}
        self.wire: list = []
        aau._emit = lambda p, m: self._route("aau", p, m)
        du._emit = lambda p, m: self._route("du", p, m)
        aau.start()
        du.start()
        self.run()

    def _route(self, side, port, msg):
        if port == "peer":
            self.wire.append((side, msg))
            self.q.append((self.du if side == "aau" else self.aau, msg))
        else:
            self.out[side].append((port, msg))

    def run(self, tamper=None):
        while self.q:
            target, msg = self.q.popleft()
            if tamper is not None:
                msg = tamper(msg)
            target.handle("peer", msg)

    def keys(self, side):
        return [m for p, m in self.out[side] if p == "key" and m["type"] == "key"]

    def aborts(self, side):
        return [m for p, m in self.out[side] if p == "key" and m["type"] == "abort"]


def key_msg(num, bits, info, **extra):
    return {"type": "key", "block": f"00000000-0000-4000-8000-{num:012d}", "num": num, "bits": pack_bits(bits),
            "n_bits": int(bits.size), "info": info, **extra}


# ---- sifting --------------------------------------------------------------------------------------------
def test_squash_map():
    rng = np.random.default_rng(0)
    # Z/0, Z/1, Z double, X/1, cross-basis (Z/0 + X/1)
    mask = np.array([0b0001, 0b0010, 0b0011, 0b1000, 0b1001] * 400, np.uint8)
    basis, bit, double, cross = squash(mask, rng)
    assert (basis[0::5] == 0).all() and (bit[0::5] == 0).all()
    assert (basis[1::5] == 0).all() and (bit[1::5] == 1).all()
    assert (basis[3::5] == 1).all() and (bit[3::5] == 1).all()
    assert double.sum() == 400 and cross.sum() == 400
    assert 150 < bit[2::5].sum() < 250          # random bit for a double click
    assert 150 < basis[4::5].sum() < 250        # random basis for a cross-basis click
    with pytest.raises(ValueError, match="no detector bit"):
        squash(np.array([0], np.uint8), rng)


def _sift_run(bias, block_bits, n_slots, flip=0.0, seed=3):
    """Prep descriptor with basis bias ``bias``; Bob measures every 20th slot with the same bias, bits flipped
    with probability ``flip``."""
    aau, du = SiftAau("sa", block_bits=block_bits), SiftDu("sd", block_bits=block_bits, squash_seed=1)
    pair = Pair(aau, du)
    desc = prng.prep_descriptor(seed, [0.15, 0.55, 0.30], bias)
    rng = np.random.default_rng(seed)
    frame = 200_000
    for start in range(0, n_slots, frame):
        stop = start + frame
        meta = {"prep": desc, "intensities": [0.6, 0.2, 0.0], "rate_hz": 1e9}
        aau.work({"prep": Frame(start, stop, np.zeros(0, PREP_DTYPE), meta=meta)})
        slots = np.arange(start, stop, 20, dtype=np.int64)
        _, a_basis, a_bit = prng.prep_choices(desc, slots)
        b = (rng.random(slots.size) >= bias).astype(np.uint8)
        val = np.where(b == a_basis, a_bit, rng.integers(0, 2, slots.size)) ^ (rng.random(slots.size) < flip)
        clicks = np.zeros(slots.size, CLICK_DTYPE)
        clicks["slot"], clicks["basis"], clicks["mask"] = slots, b, (1 << (2 * b + val)).astype(np.uint8)
        du.work({"clicks": Frame(start, stop, clicks, meta={"rate_hz": 1e9})})
        pair.run()
    aau.end()
    du.end()
    pair.run()
    return aau, du, pair, desc


def test_sifting_biased_bases_gives_identical_keys_and_exact_block_size():
    bias = 0.9
    aau, du, pair, desc = _sift_run(bias, block_bits=5000, n_slots=2_000_000)
    ka, kd = pair.keys("aau"), pair.keys("du")
    assert len(ka) == len(kd) >= 2
    for a, d in zip(ka, kd):
        assert a["block"] == d["block"] and a["num"] == d["num"]
        ba, bd = unpack_bits(a["bits"], a["n_bits"]), unpack_bits(d["bits"], d["n_bits"])
        np.testing.assert_array_equal(ba, bd)  # no channel errors: sifted keys agree exactly
        assert a["info"]["n_x"] == np.bincount(d["key_cls"], minlength=3).tolist()
        assert d["info"]["source"]["basis_bias"] == bias
    assert all(k["n_bits"] == 5000 for k in ka[:-1])  # cut exactly at block_bits
    # efficient BB84: matched fraction is q^2 + (1-q)^2 of the clicks (binomial, 6 sigma)
    clicks = du.counters["clicks"]
    p = bias**2 + (1 - bias) ** 2
    assert abs(du.counters["matched"] - clicks * p) < 6 * np.sqrt(clicks * p * (1 - p))
    assert aau.finished() and du._done


def test_sifting_waits_for_answers_from_when_a_chunk_left_not_from_when_it_was_made():
    """Block.awaiting_peer of the DU's sifting: unanswered chunks are owed since they were sent. A send waits while the
    AAU is not connected (a DU with real detectors may start first), and that wait is not the AAU's silence."""
    import time

    du = SiftDu("sd", block_bits=1000, squash_seed=1)
    du._emit = lambda port, msg: time.sleep(0.3) if msg.get("type") == "chunk" else None   # a send that waits
    du.start()
    assert du.awaiting_peer() is None
    clicks = np.zeros(3, CLICK_DTYPE)
    clicks["slot"], clicks["mask"] = [5, 9, 40], [1, 2, 4]
    t0 = time.monotonic()
    du.work({"clicks": Frame(0, 100, clicks, meta={"rate_hz": 1e9})})
    since, what = du.awaiting_peer()
    assert since >= t0 + 0.3 and what == "sift: 1 chunk(s) wait for the AAU's answers"


def test_sifted_test_basis_errors_reach_estimation():
    aau, du, pair, _ = _sift_run(0.5, block_bits=4000, n_slots=1_000_000, flip=0.05)
    d = pair.keys("du")[0]
    err = np.asarray(d["test_err"], float)
    assert abs(err.mean() - 0.05) < 6 * np.sqrt(0.05 * 0.95 / err.size)


@settings(max_examples=300, deadline=None)
@given(first=st.integers(0, (1 << 61) - 1), gaps=st.lists(st.one_of(st.integers(1, 300), st.integers(250, 70_000),
                                                                     st.integers(1, 1 << 40)), max_size=60))
def test_slot_encoding_round_trips_over_the_wire_in_its_fewest_bytes(first, gaps):
    slots = first + np.concatenate([[0], np.cumsum(np.asarray(gaps, dtype=np.int64))]).astype(np.int64)
    enc = encode_slots(slots)
    big = [g >> 8 for g in gaps if g > 255]
    top = max(big, default=0)
    assert enc["low"].dtype == np.uint8 and enc["low"].size == len(gaps) and enc["high"].size == len(big)
    assert enc["high"].dtype.itemsize == (1 if top < 256 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8)
    parts = wire.encode_message(0, envelope("sift", "chunk", **enc))
    _, _, _, _, trailer = wire.decode_header(bytes(parts[0]))
    got = decode_slots(wire.decode_message(trailer, [bytes(p) for p in parts[1:]]))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, slots)


def _slots_msg(**change):
    msg = encode_slots(np.array([5, 6, 400, 70_000], dtype=np.int64))
    msg.update(change)
    return {k: v for k, v in msg.items() if v is not None}


@pytest.mark.parametrize("bad, why", [
    (_slots_msg(low=np.array([1, 0, 0], np.uint8), wide=pack_bits(np.array([0, 0, 0]))), "high parts disagree"),
    (_slots_msg(low=np.array([0, 138, 0], np.uint8), wide=pack_bits(np.array([0, 0, 1]))), "high parts disagree"),
    (_slots_msg(low=np.array([0, 138, 0], np.uint8), wide=pack_bits(np.array([0, 1, 1])),
                high=np.array([1, 0], np.uint16)), "high parts disagree"),
    (_slots_msg(low=np.array([0, 138, 0], np.uint8), wide=pack_bits(np.array([0, 1, 1])),
                high=np.array([1, 272], np.uint16)), "not strictly increasing"),
    (_slots_msg(low=np.array([1, 138], np.uint8)), "sizes disagree"),
    (_slots_msg(low=np.array([1, 138, 0], np.uint16)), "low a uint8"),
    (_slots_msg(high=np.array([1, 272], np.int32)), "unsigned"),
    (_slots_msg(first=-1), "first out of range"),
    (_slots_msg(high=None), "missing field"),
    (_slots_msg(wide=np.zeros(3, np.uint8)), "packed bits"),
    (_slots_msg(first=(1 << 62) - 10), "beyond 2"),
])
def test_malformed_slot_encodings_are_refused(bad, why):
    with pytest.raises(ProtocolError, match=why):
        decode_slots(bad)


def test_a_malformed_chunk_stops_sifting_with_a_clear_line():
    aau = SiftAau("sift_a", block_bits=100)
    aau._emit = lambda p, m: None
    aau.start()
    aau._peer_ok = True
    chunk = envelope("sift", "chunk", **encode_slots(np.array([3, 9, 20])), bases=np.array([1, 2], np.uint8))
    with pytest.raises(BlockError, match="sift: chunk malformed: packed bits: 2 bytes cannot hold exactly 3 bits"):
        aau.handle("peer", chunk)


# ---- estimation ------------------------------------------------------------------------------------------
def _estimate(err_rate, n_key=50_000, n_test=9_000, seed=0, **params):
    rng = np.random.default_rng(seed)
    est = EstimateDu("est", **params)
    out = []
    est._emit = lambda p, m: out.append((p, m))
    est.start()
    cls_k = rng.choice(3, n_key, p=[0.4499, 0.55, 0.0001]).astype(np.uint8)
    cls_t = rng.choice(3, n_test, p=[0.45, 0.5499, 0.0001]).astype(np.uint8)
    info = {"num": 17, "source": SOURCE, "n_key": n_key}
    est.handle("key", key_msg(17, rng.integers(0, 2, n_key, dtype=np.uint8), info, key_cls=cls_k, test_cls=cls_t,
                              test_err=(rng.random(n_test) < err_rate).astype(np.uint8)))
    return est, out


def test_estimate_aborts_above_qber_threshold(capsys):
    est, out = _estimate(0.25, qber_threshold=0.11)
    aborts = [m for p, m in out if m["type"] == "abort"]
    assert len(aborts) == 1 and aborts[0]["num"] == 17 and aborts[0]["stage"] == "estimate"
    assert "QBER" in aborts[0]["reason"] and "> 11 %" in aborts[0]["reason"]
    assert est.counters["blocks_aborted"] == 1
    assert "block 17 aborted: QBER 2" in capsys.readouterr().err


def test_estimate_passes_a_good_block_with_counts():
    est, out = _estimate(0.01)
    keys = [m for p, m in out if m["type"] == "key"]
    assert len(keys) == 1
    info = keys[0]["info"]
    assert sum(info["n_x"]) == 50_000 and info["l_estimate"] > 0 and 0.005 < info["qber_test"] < 0.015
    assert est.counters["blocks_aborted"] == 0


# ---- error correction ------------------------------------------------------------------------------------
def _ec_pair(n=20_000, q=0.02, seed=4, **kw):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, n, dtype=np.uint8)
    b = a ^ (rng.random(n) < q).astype(np.uint8)
    aau, du = ReconcileAau("ea", **kw.get("aau", {})), ReconcileDu("ed", **kw.get("du", {}))
    pair = Pair(aau, du)
    return pair, a, b


def test_cascade_leak_equals_disclosed_parity_bits():
    pair, a, b = _ec_pair()
    pair.aau.handle("key", key_msg(1, a, {"num": 1}))
    pair.du.handle("key", key_msg(1, b, {"num": 1, "qber_estimate": 0.02}))
    pair.run()
    ka, kd = pair.keys("aau"), pair.keys("du")
    assert len(ka) == len(kd) == 1
    disclosed = sum(cascade.ParityReply.from_bytes(m["reply"]).bits.size
                    for side, m in pair.wire if side == "aau" and m["type"] == "reply")
    assert ka[0]["info"]["leak_ec"] == kd[0]["info"]["leak_ec"] == disclosed > 0
    np.testing.assert_array_equal(unpack_bits(kd[0]["bits"], kd[0]["n_bits"]), a)  # corrected to Alice's key
    assert kd[0]["info"]["errors_corrected"] == int((a != b).sum())
    msgs = sum(1 for _, m in pair.wire if m["type"] != "hello")
    assert kd[0]["info"]["messages"]["ec"] == msgs


def test_mismatched_method_fails_naming_both_values():
    with pytest.raises(BlockError, match=r"method is 'cascade' at the DU but 'ldpc' at the AAU"):
        Pair(ReconcileAau("ea", method="ldpc", ldpc_code_bits=256), ReconcileDu("ed", method="cascade"))


def test_mismatched_block_bits_fails_naming_both_values():
    with pytest.raises(BlockError, match=r"block_bits is 2000 at the DU but 1000 at the AAU"):
        Pair(SiftAau("sa", block_bits=1000), SiftDu("sd", block_bits=2000))


def test_estimate_abort_is_relayed_to_the_aau_holding_the_block():
    pair, a, b = _ec_pair(n=2000)
    pair.aau.handle("key", key_msg(3, a, {"num": 3}))
    pair.du.handle("key", {"type": "abort", "block": key_msg(3, a, {})["block"], "num": 3, "stage": "estimate",
                           "reason": "QBER 30 % > 11 %"})
    pair.run()
    assert pair.aau.counters["blocks_aborted"] == 1 and not pair.aau._held
    assert [m["num"] for m in pair.aborts("aau")] == [3]


# ---- verification ----------------------------------------------------------------------------------------
def _verify(a, b, tamper=None):
    pair = Pair(VerifyAau("va", seed=1), VerifyDu("vd"))
    info = {"num": 5}
    pair.aau.handle("key", key_msg(5, a, dict(info)))
    pair.du.handle("key", key_msg(5, b, dict(info)))
    pair.run(tamper)
    return pair


def test_verification_mismatch_discards_at_both_ends():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2, 10_000, dtype=np.uint8)
    b = a.copy()
    b[1234] ^= 1
    pair = _verify(a, b)
    assert not pair.keys("aau") and not pair.keys("du")
    assert pair.aau.counters["blocks_aborted"] == pair.du.counters["blocks_aborted"] == 1
    assert "mismatch" in pair.aborts("du")[0]["reason"]
    good = _verify(a, a.copy())
    assert len(good.keys("aau")) == len(good.keys("du")) == 1
    assert good.keys("du")[0]["info"]["leak_verify"] == 61


def test_message_for_wrong_block_id_aborts_that_block():
    a = np.random.default_rng(3).integers(0, 2, 5000, dtype=np.uint8)

    def tamper(msg):
        if msg.get("type") == "request":
            msg = dict(msg, block="00000000-0000-4000-8000-999999999999")
        return msg

    pair = _verify(a, a.copy(), tamper)
    assert not pair.keys("aau") and not pair.keys("du")
    assert "wrong block id" in pair.aborts("aau")[0]["reason"]
    assert pair.du.counters["blocks_aborted"] == 1


def test_message_out_of_sequence_aborts_that_block():
    a = np.random.default_rng(3).integers(0, 2, 5000, dtype=np.uint8)
    pair = _verify(a, a.copy(), lambda m: dict(m, seq=7) if m.get("type") == "tag" else m)
    assert not pair.keys("du") and "out of sequence" in pair.aborts("du")[0]["reason"]


# ---- privacy amplification -------------------------------------------------------------------------------
def test_pa_output_length_matches_finite_key_formula():
    rng = np.random.default_rng(8)
    n = 50_000
    bits = rng.integers(0, 2, n, dtype=np.uint8)
    info = {"num": 2, "source": SOURCE, "n_x": [22400, 27597, 3], "n_z": [4100, 5060, 2], "m_z": [30, 60, 1],
            "leak_ec": 4200, "leak_verify": 61}
    pair = Pair(AmplifyAau("pa", seed=5), AmplifyDu("pd"))
    pair.aau.handle("key", key_msg(2, bits, dict(info)))
    pair.du.handle("key", key_msg(2, bits, dict(info)))
    pair.run()
    expect = int(key_length(info["n_x"], info["n_z"], info["m_z"], SOURCE, 1e-10, 1e-12, 4261).length)
    ka, kd = pair.keys("aau")[0], pair.keys("du")[0]
    assert 0 < expect < n and ka["n_bits"] == kd["n_bits"] == expect
    np.testing.assert_array_equal(unpack_bits(ka["bits"], expect), unpack_bits(kd["bits"], expect))
    seed_msg = next(m for s, m in pair.wire if m["type"] == "seed")
    seed = unpack_bits(seed_msg["seed"], seed_msg["n_seed"])
    np.testing.assert_array_equal(unpack_bits(kd["bits"], expect), toeplitz_hash(bits, seed, expect))
    # more leak -> shorter key, bit for bit as the formula says
    pair2 = Pair(AmplifyAau("pa", seed=5), AmplifyDu("pd"))
    info2 = dict(info, leak_ec=6200)
    pair2.aau.handle("key", key_msg(2, bits, dict(info2)))
    pair2.du.handle("key", key_msg(2, bits, dict(info2)))
    pair2.run()
    assert pair2.keys("du")[0]["n_bits"] == expect - 2000


def test_pa_aborts_when_the_aau_counts_a_different_leak():
    bits = np.random.default_rng(9).integers(0, 2, 50_000, dtype=np.uint8)
    info = {"num": 2, "source": SOURCE, "n_x": [22400, 27597, 3], "n_z": [4100, 5060, 2], "m_z": [30, 60, 1],
            "leak_ec": 4200, "leak_verify": 61}
    pair = Pair(AmplifyAau("pa", seed=5), AmplifyDu("pd"))
    pair.aau.handle("key", key_msg(2, bits, dict(info, leak_ec=4100)))
    pair.du.handle("key", key_msg(2, bits, dict(info)))
    pair.run()
    assert not pair.keys("aau") and not pair.keys("du")
    assert "leak" in pair.aborts("du")[0]["reason"]


# ---- LDPC error correction (in-process halves) -------------------------------------------------------------
def _ldpc_ec(mode, n=30_000, q=0.03, **extra):
    kw = dict(method="ldpc", ldpc_code_bits=4096, ldpc_mode=mode, **extra)
    pair, a, b = _ec_pair(n=n, q=q, seed=7, aau=dict(kw, ldpc_seed=3), du=dict(kw))
    pair.aau.handle("key", key_msg(1, a, {"num": 1}))
    pair.du.handle("key", key_msg(1, b, {"num": 1, "qber_estimate": q}))
    pair.run()
    return pair, a, b


def test_ldpc_blind_block_corrects_with_reveal_rounds_and_exact_leak():
    from qkdflow.distill import ldpc

    pair, a, b = _ldpc_ec("blind")
    ka, kd = pair.keys("aau"), pair.keys("du")
    assert len(ka) == len(kd) == 1, pair.aborts("du")
    np.testing.assert_array_equal(unpack_bits(kd[0]["bits"], kd[0]["n_bits"]), a)
    types = [m["type"] for side, m in pair.wire if side == "du"]
    rounds = types.count("reveal_request")
    assert rounds >= 1 and rounds + 1 == kd[0]["info"]["ldpc_rounds"]      # one message per round, whole block
    # leak = sum over frames of (m - p0) + every revealed value, counted from the bytes on the wire
    syn = next(m for side, m in pair.wire if side == "aau" and m["type"] == "syndromes")
    sms = [ldpc.SyndromeMessage.from_bytes(r) for r in syn["frames"]]
    revealed = sum(ldpc.RevealMessage.from_bytes(r).count
                   for side, m in pair.wire if side == "aau" and m["type"] == "reveals" for r in m["frames"])
    assert all(sm.blind for sm in sms) and revealed > 0
    expect = sum(sm.m - sm.punctured for sm in sms) + revealed
    assert ka[0]["info"]["leak_ec"] == kd[0]["info"]["leak_ec"] == expect
    assert kd[0]["info"]["ldpc_revealed_bits"] == revealed
    assert kd[0]["info"]["errors_corrected"] == int((a != b).sum())


def test_ldpc_blind_reliability_requests_name_unknown_symbols_and_order_mode_sends_none():
    from qkdflow.distill import ldpc

    pair, a, _ = _ldpc_ec("blind", q=0.05)               # default: ldpc_reveal reliability (m >= 1000 at 5 %)
    reqs = [m for side, m in pair.wire if side == "du" and m["type"] == "reveal_request"]
    answers = [m for side, m in pair.wire if side == "aau" and m["type"] == "reveals"]
    assert reqs and len(reqs) == len(answers) and all(len(m["positions"]) == len(m["frames"]) for m in reqs)
    assert sum(p is not None for m in reqs for p in m["positions"]) > 0   # None: a frame revealed in order
    for req, ans in zip(reqs, answers):                  # Alice answered exactly where the DU asked
        for raw_pos, raw in zip(req["positions"], ans["frames"]):
            got = ldpc.RevealMessage.from_bytes(raw).positions
            assert got is None if raw_pos is None else np.array_equal(got, ldpc.decode_positions(raw_pos))
    kd = pair.keys("du")
    assert len(kd) == 1 and len(pair.keys("aau")) == 1
    np.testing.assert_array_equal(unpack_bits(kd[0]["bits"], kd[0]["n_bits"]), a)
    order, a2, _ = _ldpc_ec("blind", ldpc_reveal="order")
    assert len(order.keys("du")) == 1
    reqs = [m for side, m in order.wire if side == "du" and m["type"] == "reveal_request"]
    assert reqs and not any("positions" in m for m in reqs)
    np.testing.assert_array_equal(unpack_bits(order.keys("du")[0]["bits"], order.keys("du")[0]["n_bits"]), a2)


def test_ldpc_reveal_request_naming_a_symbol_twice_aborts_the_block_at_both_ends():
    seen = {}

    def tamper(msg):                                     # the second request repeats the first one's positions
        if msg.get("type") == "reveal_request":
            named = [p for p in msg["positions"] if p is not None]
            if "first" in seen and named:
                msg = dict(msg, positions=[seen["first"] if p is not None else None for p in msg["positions"]])
            elif named:
                seen["first"] = named[0]
        return msg

    kw = dict(method="ldpc", ldpc_code_bits=4096, ldpc_mode="blind")
    pair, a, b = _ec_pair(n=30_000, q=0.05, seed=7, aau=dict(kw, ldpc_seed=3), du=dict(kw))
    pair.aau.handle("key", key_msg(1, a, {"num": 1}))
    pair.du.handle("key", key_msg(1, b, {"num": 1, "qber_estimate": 0.05}))
    pair.run(tamper)
    assert "first" in seen and not pair.keys("aau") and not pair.keys("du")
    reasons = [m["reason"] for m in pair.aborts("aau")]
    assert reasons and "reveal_request" in reasons[0] and ("disclosed before" in reasons[0]
                                                           or "shortened" in reasons[0])


def test_ldpc_oneshot_block_still_selectable():
    pair, a, _ = _ldpc_ec("oneshot", ldpc_efficiency=1.5)
    kd = pair.keys("du")
    assert len(kd) == 1 and len(pair.keys("aau")) == 1
    np.testing.assert_array_equal(unpack_bits(kd[0]["bits"], kd[0]["n_bits"]), a)
    assert not any(m["type"] in ("reveal_request", "reveals") for _, m in pair.wire)


def test_ldpc_mode_mismatch_fails_naming_both_values():
    with pytest.raises(BlockError, match=r"ldpc_mode is 'oneshot' at the DU but 'blind' at the AAU"):
        Pair(ReconcileAau("ea", method="ldpc", ldpc_code_bits=256),
             ReconcileDu("ed", method="ldpc", ldpc_code_bits=256, ldpc_mode="oneshot"))


def test_ldpc_reveal_mismatch_fails_naming_both_values():
    with pytest.raises(BlockError, match=r"ldpc_reveal is 'order' at the DU but 'reliability' at the AAU"):
        Pair(ReconcileAau("ea", method="ldpc", ldpc_code_bits=256),
             ReconcileDu("ed", method="ldpc", ldpc_code_bits=256, ldpc_reveal="order"))


def test_only_the_declared_exchanges_may_arrive_with_deferred_tags():
    """The transport marks a message that came with a deferred tag (runtime.auth) "_auth": "deferred". Cascade's
    request/reply may (done/done_ok's tags cover them before the key moves on); done_ok arriving so means its tag
    was stripped on the way: the run stops and no key leaves."""
    def deliver_deferred(types):
        def tamper(msg):
            return dict(msg, _auth="deferred") if msg.get("type") in types else msg
        return tamper

    pair, a, b = _ec_pair()
    assert "request" in pair.du.deferred_types and "reply" in pair.aau.deferred_types
    pair.aau.handle("key", key_msg(1, a, {"num": 1}))
    pair.du.handle("key", key_msg(1, b, {"num": 1, "qber_estimate": 0.02}))
    pair.run(deliver_deferred({"request", "reply"}))
    np.testing.assert_array_equal(unpack_bits(pair.keys("du")[0]["bits"], pair.keys("du")[0]["n_bits"]), a)

    pair, a, b = _ec_pair()
    pair.aau.handle("key", key_msg(1, a, {"num": 1}))
    pair.du.handle("key", key_msg(1, b, {"num": 1, "qber_estimate": 0.02}))
    with pytest.raises(BlockError, match="'done_ok' from the AAU arrived without its authentication tag"):
        pair.run(deliver_deferred({"done_ok"}))
    assert not pair.keys("du")
