"""Key store: two-phase staging, once-only delivery, peer retrieval, crash safety under SIGKILL."""
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from qkdflow.distill.keystore import (
    AlreadyDelivered,
    InsufficientKey,
    KeyBlockMeta,
    KeyNotFound,
    KeyStore,
    KeyStoreError,
)

META = KeyBlockMeta(qber=0.021, leak_bits=1234, eps_sec=1e-10, eps_cor=1e-12)


def bits(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


def test_pending_is_not_deliverable_and_commit_makes_it_so():
    ks = KeyStore(":memory:")
    bid = uuid.uuid4()
    ks.stage(bid, bits(1, 4096), META)
    with pytest.raises(InsufficientKey):
        ks.take_keys(1, 256)
    assert ks.stats()["pending_blocks"] == 1
    ks.commit(bid)
    ks.commit(bid)  # idempotent
    info = ks.block_info(bid)
    assert (info.state, info.length_bits, info.qber, info.leak_bits) == ("committed", 4096, 0.021, 1234)
    keys = ks.take_keys(16, 256)
    expect = np.packbits(bits(1, 4096)).tobytes()
    assert [k.key for k in keys] == [expect[32 * i : 32 * (i + 1)] for i in range(16)]
    assert len({k.key_id for k in keys}) == 16


def test_abort_and_unknown_blocks():
    ks = KeyStore(":memory:")
    bid = uuid.uuid4()
    ks.stage(bid, b"\xff" * 64, META)
    ks.abort(bid)
    with pytest.raises(KeyNotFound):
        ks.commit(bid)
    ks.abort(bid)  # no-op
    ks.stage(bid, b"\xff" * 64, META)
    ks.commit(bid)
    with pytest.raises(KeyStoreError, match="committed"):
        ks.abort(bid)
    with pytest.raises(ValueError, match="already exists"):
        ks.stage(bid, b"\x00" * 8, META)


def test_each_key_delivered_once_and_no_partial_delivery():
    ks = KeyStore(":memory:")
    ids = [uuid.uuid4() for _ in range(3)]
    for i, bid in enumerate(ids):
        ks.stage(bid, bits(i, 1000), META)  # 1000 bits -> three 256-bit keys each, 232 left over
        ks.commit(bid)
    assert ks.available_keys(256) == 9
    first = ks.take_keys(4, 256)
    assert [(k.block_id, k.offset_bits) for k in first] == [(str(ids[0]), 0), (str(ids[0]), 256),
                                                            (str(ids[0]), 512), (str(ids[1]), 0)]
    with pytest.raises(InsufficientKey, match="requested 6 keys of 256 bits, only 5"):
        ks.take_keys(6, 256)
    rest = ks.take_keys(5, 256)  # the failed request delivered nothing
    slices = {(k.block_id, k.offset_bits) for k in first + rest}
    assert len(slices) == 9
    assert ks.take_keys(3, 232)[0].size_bits == 232  # leftovers still usable by smaller requests
    st = ks.stats()
    assert st["delivered_keys"] == 12 and st["delivered_bits"] == 9 * 256 + 3 * 232
    assert st["unallocated_bits"] == 0 and st["leak_bits"] == 3 * 1234


def test_peer_side_get_by_id_once_and_overlap_refused():
    master, peer = KeyStore(":memory:"), KeyStore(":memory:")
    bid = uuid.uuid4()
    for ks in (master, peer):
        ks.stage(bid, bits(9, 2048), META)
        ks.commit(bid)
    keys = master.take_keys(3, 512)
    peer.accept_peer_keys([k.descriptor for k in keys])
    assert peer.stats()["reserved_keys"] == 3
    assert peer.take_keys(1, 512)[0].offset_bits == 1536  # peer never allocates the master's slices
    got = peer.get_by_ids([keys[2].key_id, keys[0].key_id])
    assert [g.key for g in got] == [keys[2].key, keys[0].key]
    with pytest.raises(AlreadyDelivered):
        peer.get_by_id(keys[0].key_id)
    with pytest.raises(KeyNotFound):
        peer.get_by_id(uuid.uuid4())
    assert peer.get_by_id(keys[1].key_id).key == keys[1].key
    # a descriptor overlapping bits the peer already handed out is refused
    more = master.take_keys(1, 512)
    with pytest.raises(KeyStoreError, match="overlap"):
        peer.accept_peer_keys([more[0].descriptor])


def test_reconcile_drops_blocks_missing_at_peer():
    a, b = KeyStore(":memory:"), KeyStore(":memory:")
    shared, only_a = uuid.uuid4(), uuid.uuid4()
    for ks, ids in ((a, [shared, only_a]), (b, [shared])):
        for bid in ids:
            ks.stage(bid, bits(1, 512), META)
            ks.commit(bid)
    assert a.reconcile(b.committed_ids()) == [str(only_a)]
    assert b.reconcile(a.committed_ids()) == []
    assert a.committed_ids() == b.committed_ids() == [str(shared)]


def test_restart_discards_pending_and_keeps_delivery_state(tmp_path):
    path = tmp_path / "aau.db"
    ks = KeyStore(path)
    done, pending = uuid.uuid4(), uuid.uuid4()
    ks.stage(done, bits(1, 1024), META)
    ks.commit(done)
    ks.stage(pending, bits(2, 1024), META)
    first = ks.take_keys(2, 256)
    ks.close()
    ks = KeyStore(path)
    assert ks.discarded_pending == 1
    with pytest.raises(KeyNotFound):
        ks.block_info(pending)
    again = ks.take_keys(2, 256)
    assert {k.offset_bits for k in first}.isdisjoint({k.offset_bits for k in again})
    with pytest.raises(InsufficientKey):
        ks.take_keys(1, 256)
    ks.close()


def test_second_process_cannot_open_a_store_in_use(tmp_path):
    path = tmp_path / "du.db"
    with KeyStore(path):
        code = f"from qkdflow.distill.keystore import KeyStore; KeyStore({str(path)!r}, busy_timeout_s=0.1)"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert res.returncode != 0 and "in use by another process" in res.stderr


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(qber=1.5, leak_bits=0, eps_sec=1e-9, eps_cor=1e-9), "qber"),
        (dict(qber=0.1, leak_bits=-1, eps_sec=1e-9, eps_cor=1e-9), "leak_bits"),
        (dict(qber=0.1, leak_bits=0, eps_sec=0.0, eps_cor=1e-9), "eps_sec"),
        (dict(qber=0.1, leak_bits=0, eps_sec=1e-9, eps_cor=1.0), "eps_cor"),
    ],
)
def test_bad_metadata(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KeyBlockMeta(**kwargs)


def test_bad_arguments():
    ks = KeyStore(":memory:")
    with pytest.raises(ValueError, match="block_id must be a UUID"):
        ks.stage("not-a-uuid", b"\x00", META)
    with pytest.raises(ValueError, match="multiple of 8"):
        ks.take_keys(1, 100)
    with pytest.raises(ValueError, match="number"):
        ks.take_keys(0, 128)
    with pytest.raises(ValueError, match="empty"):
        ks.stage(uuid.uuid4(), b"", META)


# ---------------------------------------------------------------- crash safety

WRITER = textwrap.dedent(
    """
    import sys, uuid
    import numpy as np
    from qkdflow.distill.keystore import KeyStore, KeyBlockMeta
    ks = KeyStore(sys.argv[1])
    meta = KeyBlockMeta(qber=0.03, leak_bits=10, eps_sec=1e-10, eps_cor=1e-12)
    i = int(sys.argv[2])
    while True:
        bid = uuid.UUID(int=i + 1)
        key = np.random.default_rng(i).integers(0, 2, 4096 + 8 * (i % 50), dtype=np.uint8)
        ks.stage(bid, key, meta)
        if i % 3 != 2:  # every third block stays pending forever
            ks.commit(bid)
            print("committed", i, flush=True)
        if i % 2:
            for k in ks.take_keys(3, 512):
                print("delivered", k.key_id, k.block_id, k.offset_bits, flush=True)
        i += 1
    """
)


@pytest.mark.parametrize("kill_after_lines", [15, 80, 200])
def test_sigkill_mid_write_leaves_consistent_store(tmp_path, kill_after_lines):
    path = tmp_path / "crash.db"
    start = {15: 0, 80: 1000, 200: 5000}[kill_after_lines]
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start)],
                            stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        while len(lines) < kill_after_lines:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            lines.append(line.split())
        proc.send_signal(signal.SIGKILL)  # mid-loop: likely inside a transaction
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()

    ks = KeyStore(path)
    assert ks.stats()["pending_blocks"] == 0
    committed = set(ks.committed_ids())
    reported = {str(uuid.UUID(int=int(w[1]) + 1)) for w in lines if w[0] == "committed"}
    assert reported <= committed  # every commit the writer saw returned is durable
    ks.close()

    con = sqlite3.connect(path)
    rows = con.execute("SELECT block_id, key, length_bits, state FROM blocks").fetchall()
    for bid, blob, length, state in rows:
        i = uuid.UUID(bid).int - 1
        assert state == "committed" and i % 3 != 2  # no pending block survived the restart
        expect = np.random.default_rng(i).integers(0, 2, 4096 + 8 * (i % 50), dtype=np.uint8)
        assert length == expect.size and blob == np.packbits(expect).tobytes()  # nothing half-written
    delivered_before = {(b, o) for b, o in con.execute("SELECT block_id, offset_bits FROM keys")}
    con.close()
    reported_keys = {(w[2], int(w[3])) for w in lines if w[0] == "delivered"}
    assert reported_keys <= delivered_before

    ks = KeyStore(path)
    n = ks.available_keys(512)
    fresh = ks.take_keys(n, 512) if n else []
    fresh_slices = {(k.block_id, k.offset_bits) for k in fresh}
    assert fresh_slices.isdisjoint(delivered_before)  # never delivered twice, also across the crash
    assert all(k.block_id in committed for k in fresh)
    ks.close()
