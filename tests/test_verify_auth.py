"""Error verification hash (GF(2^61 - 1) polynomial) and Wegman-Carter authentication."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdflow.distill.auth import (
    ALICE_TO_BOB,
    BOB_TO_ALICE,
    AuthenticationError,
    Authenticator,
    KeyPool,
    KeyPoolError,
    KeyPoolExhausted,
)
from qkdflow.distill.verify import (
    P61,
    VerificationHash,
    _mulmod,
    bits_to_words,
    bytes_to_words,
    collision_bound,
    poly_hash,
    poly_hash_words,
    tag_evaluations,
    tag_length_bits,
)

# ---------------------------------------------------------------- field arithmetic and the hash itself


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, P61 - 1), st.integers(0, P61 - 1)), min_size=1, max_size=50))
def test_mulmod_exact(pairs):
    a = np.array([p[0] for p in pairs], dtype=np.uint64)
    b = np.array([p[1] for p in pairs], dtype=np.uint64)
    got = _mulmod(a, b)
    assert [int(v) for v in got] == [x * y % P61 for x, y in pairs]


def test_mulmod_extremes():
    edge = np.array([0, 1, 2, P61 - 1, P61 - 2, 1 << 32, (1 << 32) - 1, 1 << 60], dtype=np.uint64)
    a, b = np.meshgrid(edge, edge)
    got = _mulmod(a.ravel(), b.ravel())
    assert [int(v) for v in got] == [int(x) * int(y) % P61 for x, y in zip(a.ravel(), b.ravel())]


def horner_reference(bits: np.ndarray, key: int) -> int:
    """Independent pure-Python reference: bits -> 56-bit big-endian words, then the length, Horner."""
    n = len(bits)
    padded = list(int(b) for b in bits) + [0] * (-n % 56)
    words = [int("".join(map(str, padded[i : i + 56])), 2) for i in range(0, len(padded), 56)] + [n]
    h = 0
    for w in words:
        h = (h + w) * key % P61
    return h


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1), max_size=600), st.lists(st.integers(0, P61 - 1), min_size=1, max_size=3))
def test_poly_hash_matches_horner(bits, keys):
    arr = np.array(bits, dtype=np.uint8)
    assert poly_hash(arr, np.array(keys, dtype=np.uint64)) == [horner_reference(arr, k) for k in keys]


def test_encoding_separates_lengths():
    # trailing zero bits change the length word, so the encodings differ
    a = bits_to_words(np.array([1, 0, 1], np.uint8))
    b = bits_to_words(np.array([1, 0, 1, 0], np.uint8))
    assert a.size == b.size and not np.array_equal(a, b)


def test_tag_length_from_eps_cor():
    L = 10**6
    eps1 = collision_bound(L, 1)
    assert eps1 == pytest.approx((math.ceil(L / 56) + 1) / P61)
    for eps in (1e-6, 1e-12, 1e-15, 1e-20, 1e-40):
        t = tag_evaluations(L, eps)
        assert collision_bound(L, t) <= eps
        assert t == 1 or collision_bound(L, t - 1) > eps
        assert tag_length_bits(L, eps) == 61 * t
    with pytest.raises(ValueError, match="eps_cor"):
        tag_evaluations(L, 0.0)


def test_verification_detects_single_bit_errors():
    rng = np.random.default_rng(21)
    key = rng.integers(0, 2, 100_000, dtype=np.uint8)
    detected = 0
    for trial in range(30):
        vh = VerificationHash.new(key.size, eps_cor=1e-16, rng=rng)  # 7.7e-16 per evaluation -> t = 2
        assert vh.leak_bits == 122 and vh.eps_cor <= 1e-16
        other = key.copy()
        other[rng.integers(key.size)] ^= 1
        assert vh.check(key, vh.tag(key))
        detected += not vh.check(other, vh.tag(key))
    assert detected == 30


def test_verification_rejects_wrong_length():
    vh = VerificationHash.new(100, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="key length"):
        vh.tag(np.zeros(99, np.uint8))


# ---------------------------------------------------------------- Wegman-Carter authentication


def make_pair(n_bytes=4096, seed=1, **kw):
    psk = np.random.default_rng(seed).bytes(n_bytes)
    return Authenticator(KeyPool(psk), "alice", **kw), Authenticator(KeyPool(psk), "bob", **kw)


def test_roundtrip_and_single_bit_tamper_fails():
    alice, bob = make_pair()
    msg = b"cascade parities block 7: 0110100111"
    tag = alice.tag(msg, 0)
    assert len(tag) == 8
    for i in range(len(msg) * 8):
        bad = bytearray(msg)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(AuthenticationError):
            bob.verify(bytes(bad), 0, tag)
    for i in range(len(tag) * 8):  # tampered tag
        bad_tag = bytearray(tag)
        bad_tag[i // 8] ^= 1 << (i % 8)
        with pytest.raises(AuthenticationError):
            bob.verify(msg, 0, bytes(bad_tag))
    assert bob.failed_attempts == 8 * (len(msg) + len(tag))
    bob.verify(msg, 0, tag)  # failures did not advance the stream; the genuine message still verifies
    assert bob.next_recv_seq == 1


def test_replay_reorder_and_truncation_fail():
    alice, bob = make_pair()
    tags = [alice.tag(m, i) for i, m in enumerate([b"m0", b"m1", b"m2"])]
    bob.verify(b"m0", 0, tags[0])
    with pytest.raises(AuthenticationError, match="expected 1"):
        bob.verify(b"m0", 0, tags[0])  # replay
    with pytest.raises(AuthenticationError, match="expected 1"):
        bob.verify(b"m2", 2, tags[2])  # reordered
    with pytest.raises(AuthenticationError):
        bob.verify(b"m2", 1, tags[2])  # m2 relabelled with the expected seq
    with pytest.raises(AuthenticationError):
        bob.verify(b"m", 1, tags[1])  # truncated
    bob.verify(b"m1", 1, tags[1])
    bob.verify(b"m2", 2, tags[2])


def test_reflection_to_sender_fails():
    alice, bob = make_pair()
    tag = alice.tag(b"x", 0)
    with pytest.raises(AuthenticationError):
        alice.verify(b"x", 0, tag)  # alice's own tag is under the alice->bob key, not bob->alice


def test_ends_stay_in_sync_over_many_messages_with_replenishment():
    rng = np.random.default_rng(4)
    bootstrap = Authenticator.required_bootstrap_bits(evaluations=2, tags_per_direction=5)
    psk = rng.bytes(bootstrap // 8 + 1)
    alice = Authenticator(KeyPool(psk), "aau", evaluations=2, rekey_every=7)
    bob = Authenticator(KeyPool(psk), "du", evaluations=2, rekey_every=7)
    new_keys = [rng.bytes(int(b)) for b in rng.integers(40, 200, 60)]
    # Each end replenishes with the same chunks in the same order, but at different times.
    a_next = b_next = 0
    for step in range(300):
        sender, receiver = (alice, bob) if rng.random() < 0.5 else (bob, alice)
        msg = rng.bytes(int(rng.integers(0, 300)))
        seq = sender.next_send_seq
        while True:
            try:
                tag = sender.tag(msg, seq)
                break
            except KeyPoolExhausted:
                if sender is alice:
                    alice.pool.add(new_keys[a_next]); a_next += 1
                else:
                    bob.pool.add(new_keys[b_next]); b_next += 1
        while True:
            try:
                receiver.verify(msg, seq, tag)
                break
            except KeyPoolExhausted:
                if receiver is alice:
                    alice.pool.add(new_keys[a_next]); a_next += 1
                else:
                    bob.pool.add(new_keys[b_next]); b_next += 1
    assert alice.next_send_seq + bob.next_send_seq == 300
    assert alice.failed_attempts == bob.failed_attempts == 0
    assert a_next > 3 and b_next > 3


def test_pool_exhaustion_is_clear_and_replenishment_recovers():
    psk = np.random.default_rng(2).bytes(Authenticator.required_bootstrap_bits(1, 1) // 8 + 1)
    alice, bob = Authenticator(KeyPool(psk), "alice"), Authenticator(KeyPool(psk), "bob")
    bob.verify(b"a", 0, alice.tag(b"a", 0))
    with pytest.raises(KeyPoolExhausted, match="alice->bob: need 61 bits"):
        alice.tag(b"b", 1)
    assert alice.next_send_seq == 1  # nothing consumed
    fresh = np.random.default_rng(3).integers(0, 2, 400, dtype=np.uint8)
    alice.pool.add(fresh)
    bob.pool.add(fresh)
    assert alice.pool.available(ALICE_TO_BOB) >= 200 and alice.pool.available(BOB_TO_ALICE) >= 200
    bob.verify(b"b", 1, alice.tag(b"b", 1))
    alice.verify(b"c", 0, bob.tag(b"c", 0))


def test_key_consumption_per_tag():
    alice, bob = make_pair(evaluations=3)
    before = alice.pool.consumed_bits[ALICE_TO_BOB]
    alice.tag(b"hello", 0)
    assert alice.pool.consumed_bits[ALICE_TO_BOB] - before == alice.key_bits_per_tag == 183
    assert alice.pool.consumed_bits[BOB_TO_ALICE] == 183  # only the bob->alice hash key


def test_eps_per_tag():
    alice, _ = make_pair(evaluations=2)
    assert alice.eps_per_tag(1000) == pytest.approx(((math.ceil(8000 / 56) + 2) / P61) ** 2)


def test_bootstrap_file_errors(tmp_path):
    need = Authenticator.required_bootstrap_bits()
    missing = tmp_path / "psk.bin"
    with pytest.raises(KeyPoolError, match=rf"psk\.bin.*not found.*{need} bits"):
        KeyPool.from_file(missing, need)
    missing.write_bytes(b"\x01" * 10)
    with pytest.raises(KeyPoolError, match=rf"psk\.bin.*holds 80 bits.*{need}"):
        KeyPool.from_file(missing, need)
    missing.write_bytes(np.random.default_rng(0).bytes(need // 8 + 1))
    a = Authenticator(KeyPool.from_file(missing, need), "alice")
    b = Authenticator(KeyPool.from_file(missing, need), "bob")
    a.pool.add(b"\x55" * 32)
    b.pool.add(b"\x55" * 32)
    b.verify(b"ok", 0, a.tag(b"ok", 0))


def test_bad_arguments():
    alice, _ = make_pair()
    with pytest.raises(ValueError, match="role"):
        Authenticator(KeyPool(b"\0" * 64), "carol")
    with pytest.raises(ValueError, match="next send sequence"):
        alice.tag(b"x", 5)
    with pytest.raises(ValueError, match="seq"):
        alice.tag(b"x", -1)
    with pytest.raises(ValueError, match="message must be bytes"):
        alice.tag("text", 0)


_C = __import__("qkdflow.distill.verify", fromlist=["_poly61"])._poly61
needs_c = pytest.mark.skipif(_C is None, reason="C extension qkdflow.distill._poly61 not built")


@needs_c
@settings(max_examples=80, deadline=None)
@given(words=st.lists(st.integers(0, P61 - 1), max_size=200),
       keys=st.lists(st.integers(0, P61 - 1), min_size=1, max_size=3), acc=st.integers(0, P61 - 1))
def test_c_horner_matches_the_numpy_hash(words, keys, acc):
    """Horner's rule in C (128-bit products) = the numpy sum of w_i r^(n-i), and continues a hash exactly."""
    import qkdflow.distill.verify as v
    w = np.array(words, dtype=np.uint64)
    k = np.array(keys, dtype=np.uint64)
    saved, v._poly61 = v._poly61, None
    try:
        ref = poly_hash_words(w, k) if w.size else [0] * k.size
    finally:
        v._poly61 = saved
    assert [_C.horner(0, int(r), w) for r in keys] == ref
    r = keys[0]
    assert _C.horner(acc, r, w) == (acc * pow(r, len(words), P61) + ref[0]) % P61


@needs_c
@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=4), r=st.integers(0, P61 - 1))
def test_c_byte_words_hash_matches_bytes_to_words(data, cuts, r):
    """horner_bytes56 over any split of a byte string into buffers = the hash of its 56-bit words (no length word)."""
    words = bytes_to_words(data)[:-1]
    ref = sum(int(x) * pow(r, len(words) - i, P61) for i, x in enumerate(words)) % P61
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    pieces = [data[i:j] for i, j in zip(bounds, bounds[1:])]
    assert _C.horner_bytes56(0, r, pieces) == ref
    assert _C.horner_bytes56(0, r, [np.frombuffer(data, np.uint8)]) == ref


@needs_c
def test_c_hash_refuses_values_outside_the_field():
    with pytest.raises(ValueError, match="2\\^61"):
        _C.horner(0, P61, np.zeros(1, np.uint64))
    with pytest.raises(ValueError, match="8-byte"):
        _C.horner(0, 1, np.zeros(3, np.uint8))
