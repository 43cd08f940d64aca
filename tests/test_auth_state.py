"""Persistent Wegman–Carter key material: pads are never reused, across restarts too (qkdflow.distill.authstate)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from qkdflow.distill.auth import ALICE_TO_BOB, BOB_TO_ALICE, KeyPoolError, KeyPoolExhausted
from qkdflow.distill.authstate import AuthState
from qkdflow.runtime.auth import AuthFailure, EdgeAuth
from qkdflow.runtime.graph import load_flowgraph
from qkdflow.runtime.scheduler import run_nodes_in_threads

PSK = np.random.default_rng(11).integers(0, 256, 2048, dtype=np.uint8).tobytes()


def _pair(tmp_path, psk=PSK):
    return AuthState(str(tmp_path / "aau.sqlite"), psk), AuthState(str(tmp_path / "du.sqlite"), psk)


def _edge(state, sender, direction=ALICE_TO_BOB, label="x->y"):
    return EdgeAuth(state, sender, direction, label, threading.Event())


def test_tags_verify_and_positions_advance(tmp_path):
    a, b = _pair(tmp_path)
    tx, rx = _edge(a, True), _edge(b, False)
    offsets = []
    for seq in range(50):
        parts = [f"message {seq}".encode()]
        tag = tx.tag(parts, seq)
        offsets.append(int.from_bytes(tag[8:12], "big"))
        rx.verify(parts, seq, tag)
    assert offsets == sorted(set(offsets)) and offsets[1] - offsets[0] >= 61


def test_altered_message_seq_or_edge_fails(tmp_path):
    a, b = _pair(tmp_path)
    tx, rx = _edge(a, True), _edge(b, False)
    tag = tx.tag([b"hello"], 0)
    with pytest.raises(AuthFailure, match="tag mismatch"):
        rx.verify([b"hellp"], 0, tag)
    with pytest.raises(AuthFailure, match="tag mismatch"):
        rx.verify([b"hello"], 1, tag)
    other = _edge(b, False, label="other edge")
    with pytest.raises(AuthFailure, match="tag mismatch"):
        other.verify([b"hello"], 0, tag)
    rx.verify([b"hello"], 0, tag)  # the genuine message still verifies: failures spend nothing
    with pytest.raises(AuthFailure, match="replay"):
        rx.verify([b"hello"], 0, tag)  # its pad is spent on this edge


def test_restart_never_reuses_a_pad(tmp_path):
    a, b = _pair(tmp_path)
    tx = _edge(a, True)
    first = {tx.tag([b"m"], s)[:12] for s in range(10)}
    a.close()  # a kill -9 leaves the same file: the lease was persisted before the pads were used
    a2 = AuthState(str(tmp_path / "aau.sqlite"), PSK)
    second = {_edge(a2, True).tag([b"m"], s)[:12] for s in range(10)}
    assert not first & second
    assert min(int.from_bytes(t[8:12], "big") for t in second) > max(int.from_bytes(t[8:12], "big") for t in first)
    # the verifier (fresh session, same file) accepts the restarted sender's tags
    rx = _edge(b, False)
    a3 = AuthState(str(tmp_path / "aau3.sqlite"), PSK)  # an independent sender at offset 0 for comparison
    t0 = _edge(a3, True).tag([b"z"], 0)
    rx.verify([b"z"], 0, t0)
    a2.close(); a3.close(); b.close()


def test_receiver_mark_survives_restart(tmp_path):
    a, b = _pair(tmp_path)
    tx, rx = _edge(a, True), _edge(b, False)
    tags = [tx.tag([b"m"], s) for s in range(3)]
    for s, t in enumerate(tags):
        rx.verify([b"m"], s, t)
    b.close()
    b2 = AuthState(str(tmp_path / "du.sqlite"), PSK)
    with pytest.raises(AuthFailure, match="replay"):
        _edge(b2, False).verify([b"m"], 0, tags[0])


def test_unauthorized_entry_is_not_sent_with_until_the_peer_holds_it(tmp_path):
    small = PSK[:64]  # 512 bits: hash keys + a few pads per direction
    a, b = _pair(tmp_path, small)
    tx = _edge(b, True, BOB_TO_ALICE)
    while True:
        try:
            tx.state.take_pad(BOB_TO_ALICE)
        except KeyPoolExhausted:
            break
    block = np.random.default_rng(3).integers(0, 2, 4096, dtype=np.uint8)
    b.add(block, "blk-1", send_ok=False)  # DU committed; the AAU may not have it yet
    with pytest.raises(KeyPoolExhausted):
        b.take_pad(BOB_TO_ALICE)
    a.add(block, "blk-1", send_ok=True)   # AAU commits
    b.authorize("blk-1")                  # AAU's "done"
    key, off, pad = b.take_pad(BOB_TO_ALICE)
    assert a.pad_at(BOB_TO_ALICE, key, off, "e")[0] == pad


def test_state_of_another_psk_is_refused(tmp_path):
    a, _ = _pair(tmp_path)
    a.close()
    with pytest.raises(KeyPoolError, match="another pre-shared key"):
        AuthState(str(tmp_path / "aau.sqlite"), PSK[::-1])
    with pytest.raises(KeyPoolError, match="bits"):
        AuthState(str(tmp_path / "tiny.sqlite"), b"\x01" * 8)


PINGPONG = """\
flowgraph: pp
nodes:
  aau: {{port: {p0}, psk_file: "{psk}"}}
  du: {{port: {p1}, psk_file: "{psk}"}}
blocks:
  s: {{type: slot_source, node: aau, frames: 20, slots_per_frame: 10}}
  ping: {{type: runtime_blocks:Pinger, node: aau}}
  pong: {{type: runtime_blocks:Ponger, node: du}}
connections: [[s.out, ping.in], [ping.ping, pong.ping], [pong.pong, ping.pong]]
"""


def test_second_run_continues_after_the_first(tmp_path, ports):
    psk = tmp_path / "psk.bin"
    psk.write_bytes(PSK * 8)
    base = ports(2)
    path = tmp_path / "pp.yaml"
    path.write_text(PINGPONG.format(p0=base, p1=base + 1, psk=psk))
    marks = []
    for _ in range(2):
        res = run_nodes_in_threads(load_flowgraph(str(path)), timeout_s=30)
        assert all(r.ok for r in res.values()), {n: r.failure for n, r in res.items()}
        s = AuthState(str(tmp_path / ".qkdflow" / "pp.aau.auth.sqlite"), PSK * 8)
        marks.append(s.marks["send:" + ALICE_TO_BOB])
        s.close()
    assert marks[1] > marks[0]  # the second run's pads start beyond the first run's lease


# ---- deferred tags: one tag covers the transcript of the messages sent without one before it ----

def _transcript_words(msgs):
    from qkdflow.runtime.auth import TRANSCRIPT_WORD, _words
    out = [np.array([TRANSCRIPT_WORD], dtype=np.uint64)]
    for seq, parts in msgs:
        w = _words(seq, b"x->y\0", parts)
        out += [np.array([w.size], dtype=np.uint64), w]
    out.append(np.array([len(msgs)], dtype=np.uint64))
    return np.concatenate(out)


def _deferred_run(tmp_path):
    a, b = _pair(tmp_path)
    tx, rx = _edge(a, True), _edge(b, False)
    rx.accept_deferred = True          # as EdgeReceiver sets it for a block with peer_deferred_types
    msgs = [(seq, [f"request {seq}".encode() * (seq + 1), bytes([seq]) * 100]) for seq in range(6)]
    tags = [tx.tag(parts, seq, defer=seq < 5) for seq, parts in msgs]
    return tx, rx, msgs, tags


def test_deferred_messages_cost_no_pad_and_the_next_tag_covers_them(tmp_path):
    from qkdflow.runtime.auth import DEFER_MARK
    tx, rx, msgs, tags = _deferred_run(tmp_path)
    assert tags[:5] == [DEFER_MARK] * 5 and len(tags[5]) == 20
    assert (tx.tags, tx.deferred) == (1, 5)
    assert [rx.verify(parts, seq, tag) for (seq, parts), tag in zip(msgs, tags)] == [False] * 5 + [True]
    assert (rx.tags, rx.deferred) == (1, 5)
    # the incremental (Horner) transcript hash is the polynomial hash of the documented word string
    tx2 = _edge(_pair(tmp_path / "again")[0], True)
    for seq, parts in msgs[:5]:
        tx2.tag(parts, seq, defer=True)
    from qkdflow.distill import verify
    saved, verify._poly61 = verify._poly61, None           # the reference: numpy's powers-of-r sum
    try:
        expect = verify.poly_hash_words(_transcript_words(msgs), np.array([tx2._r], dtype=np.uint64))[0]
    finally:
        verify._poly61 = saved
    assert tx2._digest(5, msgs[5][1]) == expect
    # after the tag the edge starts afresh: the next message alone, hashed as a single message
    nxt = [b"next"]
    assert rx.verify(nxt, 6, tx.tag(nxt, 6))


@pytest.mark.skipif(__import__("qkdflow.distill.verify", fromlist=["_poly61"])._poly61 is None,
                    reason="C extension qkdflow.distill._poly61 not built")
@pytest.mark.parametrize("c_sends", [True, False])
def test_c_and_numpy_hashing_ends_interoperate(tmp_path, c_sends):
    """A node with the C hash (straight from the message buffers) and one without (numpy words) agree on every
    tag, deferred transcripts included; a flipped byte still fails."""
    a, b = _pair(tmp_path)
    tx, rx = _edge(a, True), _edge(b, False)
    (rx if c_sends else tx)._c = None                       # that end uses the numpy path
    rx.accept_deferred = True
    big = np.random.default_rng(3).integers(0, 256, 100_003, dtype=np.uint8)
    msgs = [(s, [f"head {s}".encode(), big[s:], memoryview(big.tobytes())[:s * 7 + 1]]) for s in range(5)]
    tags = [tx.tag(parts, seq, defer=seq % 2 == 0 and seq < 4) for seq, parts in msgs]
    assert [rx.verify(parts, seq, tag) for (seq, parts), tag in zip(msgs, tags)] == [False, True, False, True, True]
    bad = bytearray(b"head 5")
    tag = tx.tag([bytes(bad)], 5)
    bad[0] ^= 1
    with pytest.raises(AuthFailure, match="tag mismatch"):
        rx.verify([bytes(bad)], 5, tag)


@pytest.mark.parametrize("attack", ["alter", "drop", "swap", "insert", "strip tag"])
def test_an_altered_dropped_reordered_or_inserted_deferred_message_fails_the_next_tag(tmp_path, attack):
    tx, rx, msgs, tags = _deferred_run(tmp_path)
    seen = list(zip(msgs, tags))
    if attack == "alter":
        (seq, parts), tag = seen[2]
        seen[2] = ((seq, [parts[0][:-1] + b"X", parts[1]]), tag)
    elif attack == "drop":
        del seen[3]
    elif attack == "swap":
        seen[1], seen[2] = seen[2], seen[1]
    elif attack == "insert":
        seen.insert(4, ((4, [b"forged"]), seen[0][1]))
    else:                               # the genuine tag replaced by the deferral mark, then the next one tagged
        from qkdflow.runtime.auth import DEFER_MARK
        seen[5] = (seen[5][0], DEFER_MARK)
        nxt = [b"next"]
        seen.append(((6, nxt), tx.tag(nxt, 6)))
    for (seq, parts), tag in seen[:-1]:
        assert rx.verify(parts, seq, tag) is False
    (seq, parts), tag = seen[-1]
    with pytest.raises(AuthFailure, match="tag mismatch.*deferred messages before it"):
        rx.verify(parts, seq, tag)


def test_a_message_without_its_tag_into_a_block_that_takes_none_fails(tmp_path):
    """Only blocks that declare deferrable message types get untagged messages; into any other block (key stores,
    verification, ...) stripping a tag is an authentication failure at once, never a delivery."""
    from qkdflow.runtime.auth import DEFER_MARK
    _, b = _pair(tmp_path)
    rx = _edge(b, False)
    with pytest.raises(AuthFailure, match="without its tag, into a block that takes none"):
        rx.verify([b"commit"], 0, DEFER_MARK)


def test_a_failure_on_deferred_input_says_it_was_not_yet_authenticated(tmp_path):
    """A block that finds a deferred message inconsistent fails before the covering tag arrives: its failure says
    the edge held messages not yet authenticated (tampering is as likely as a faulty peer); after the tag, nothing."""
    from types import SimpleNamespace

    from qkdflow.runtime.auth import unauthenticated_note
    tx, rx, msgs, tags = _deferred_run(tmp_path)
    receivers = [SimpleNamespace(auth=rx), SimpleNamespace(auth=None)]
    for (seq, parts), tag in list(zip(msgs, tags))[:3]:
        rx.verify(parts, seq, tag)
    assert rx.pending == 3
    assert unauthenticated_note(receivers) == (" (edge x->y: 3 deferred message(s) delivered and not yet "
                                               "authenticated: altered in transit or a faulty peer)")
    for (seq, parts), tag in list(zip(msgs, tags))[3:]:
        rx.verify(parts, seq, tag)
    assert rx.pending == 0 and unauthenticated_note(receivers) == ""
