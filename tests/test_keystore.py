"""Key store: two-phase staging, the confirmed gate, once-only delivery (also across processes), the owner lock,
peer retrieval, crash safety under SIGKILL, and the store stage's protocol and crash windows."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from qkdflow.distill.protocol import envelope
from qkdflow.distill.keystore import (
    AlreadyDelivered,
    InsufficientKey,
    KeyBlockMeta,
    KeyDescriptor,
    KeyNotConfirmed,
    KeyNotFound,
    KeyStore,
    KeyStoreError,
)

META = KeyBlockMeta(qber=0.021, leak_bits=1234, eps_sec=1e-10, eps_cor=1e-12)


def bits(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


def test_pending_and_unconfirmed_are_not_deliverable_confirm_makes_it_so():
    ks = KeyStore(":memory:")
    bid = uuid.uuid4()
    ks.stage(bid, bits(1, 4096), META)
    with pytest.raises(InsufficientKey):
        ks.take_keys(1, 256)
    assert ks.stats()["pending_blocks"] == 1
    with pytest.raises(KeyNotFound, match="not committed"):
        ks.confirm(bid)  # a pending block cannot be confirmed
    ks.commit(bid)
    ks.commit(bid)  # idempotent
    info = ks.block_info(bid)
    assert (info.state, info.length_bits, info.qber, info.leak_bits) == ("committed", 4096, 0.021, 1234)
    assert not info.deliverable and ks.committed_ids() == [str(bid)] and ks.confirmed_ids() == []
    with pytest.raises(InsufficientKey):  # committed here only: the peer may never commit it
        ks.take_keys(1, 256)
    st = ks.stats()
    assert ks.available_keys(256) == 0 and st["unallocated_bits"] == 0 and st["unconfirmed_bits"] == 4096
    ks.confirm(bid)
    ks.confirm(bid)  # idempotent
    assert ks.block_info(bid).deliverable and ks.available_keys(256) == 16
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
        ks.commit(bid, confirmed=True)
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
        ks.commit(bid, confirmed=True)
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


def test_reconcile_drops_blocks_missing_at_peer_and_confirms_the_rest():
    a, b = KeyStore(":memory:"), KeyStore(":memory:")
    shared, only_a = uuid.uuid4(), uuid.uuid4()
    for ks, ids in ((a, [shared, only_a]), (b, [shared])):
        for bid in ids:
            ks.stage(bid, bits(1, 512), META)
            ks.commit(bid)
    assert a.available_keys(256) == b.available_keys(256) == 0
    assert a.reconcile(b.committed_ids()) == [str(only_a)]
    assert b.reconcile(a.committed_ids()) == []
    assert a.committed_ids() == b.committed_ids() == a.confirmed_ids() == b.confirmed_ids() == [str(shared)]
    assert a.available_keys(256) == b.available_keys(256) == 2


def test_restart_discards_pending_and_keeps_delivery_state(tmp_path):
    path = tmp_path / "aau.db"
    ks = KeyStore(path, owner=True)
    done, pending = uuid.uuid4(), uuid.uuid4()
    ks.stage(done, bits(1, 1024), META)
    ks.commit(done, confirmed=True)
    ks.stage(pending, bits(2, 1024), META)
    first = ks.take_keys(2, 256)
    ks.close()
    ks = KeyStore(path, owner=True)
    assert ks.discarded_pending == 1
    with pytest.raises(KeyNotFound):
        ks.block_info(pending)
    again = ks.take_keys(2, 256)
    assert {k.offset_bits for k in first}.isdisjoint({k.offset_bits for k in again})
    with pytest.raises(InsufficientKey):
        ks.take_keys(1, 256)
    ks.close()


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
    ks = KeyStore(sys.argv[1], owner=True)
    meta = KeyBlockMeta(qber=0.03, leak_bits=10, eps_sec=1e-10, eps_cor=1e-12)
    i = int(sys.argv[2])
    while True:
        bid = uuid.UUID(int=i + 1)
        key = np.random.default_rng(i).integers(0, 2, 4096 + 8 * (i % 50), dtype=np.uint8)
        ks.stage(bid, key, meta)
        if i % 3 != 2:  # every third block stays pending forever
            ks.commit(bid, confirmed=True)
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

    ks = KeyStore(path, owner=True)  # the kernel dropped the killed owner's lock
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


# ---------------------------------------------------------------- several processes on one store

AGENT = textwrap.dedent(
    """
    # One KeyStore in its own process, driven line by line: a JSON command in, a JSON answer out.
    import json, sys
    import numpy as np
    from qkdflow.distill.keystore import KeyStore, KeyBlockMeta, KeyStoreError
    meta = KeyBlockMeta(qber=0.03, leak_bits=10, eps_sec=1e-10, eps_cor=1e-12)
    try:
        ks = KeyStore(sys.argv[1], owner=sys.argv[2] == "owner")
    except KeyStoreError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        sys.exit(3)
    print(json.dumps({"ok": True, "discarded": ks.discarded_pending}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "stage":
            ks.stage(cmd["bid"], np.random.default_rng(cmd["seed"]).integers(0, 2, cmd["n"], dtype=np.uint8), meta)
            out = {}
        elif op == "commit":
            ks.commit(cmd["bid"], confirmed=cmd.get("confirmed", False))
            out = {}
        elif op == "take_all":  # take keys in small random batches until the store is dry
            rng = np.random.default_rng(cmd["seed"])
            got = []
            while True:
                try:
                    keys = ks.take_keys(int(rng.integers(1, 4)), 256)
                    got += [[k.block_id, k.offset_bits, k.key.hex()] for k in keys]
                except KeyStoreError:
                    if ks.available_keys(256) == 0:
                        break
            out = {"keys": got}
        elif op == "stats":
            out = ks.stats()
        else:
            raise SystemExit(f"unknown op {op}")
        print(json.dumps(out), flush=True)
    """
)


class Agent:
    """A KeyStore in a child process (owner or reader)."""

    def __init__(self, path, role="reader"):
        self.p = subprocess.Popen([sys.executable, "-c", AGENT, str(path), role], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.hello = json.loads(self.p.stdout.readline() or '{"error": "agent died"}')

    def send(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()

    def recv(self):
        line = self.p.stdout.readline()
        assert line, self.p.stderr.read()
        return json.loads(line)

    def __call__(self, **cmd):
        self.send(**cmd)
        return self.recv()

    def kill(self):
        if "error" in self.hello:  # refused at open: it exits by itself
            self.p.wait(timeout=30)
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            f.close()


def test_owner_process_writes_while_a_reader_in_another_process_delivers(tmp_path):
    path = tmp_path / "du.db"
    owner = Agent(path, "owner")
    try:
        assert owner.hello == {"ok": True, "discarded": 0}
        first, mid = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
        owner(op="stage", bid=first, seed=1, n=2048)
        owner(op="commit", bid=first, confirmed=True)
        owner(op="stage", bid=mid, seed=2, n=2048)  # the owner is mid-block when the reader opens the store
        reader = KeyStore(path)  # no exclusive lock any more: opens beside the owner
        assert reader.owner is False and reader.discarded_pending == 0
        assert reader.stats()["pending_blocks"] == 1  # the reader left the owner's pending block alone
        keys = reader.take_keys(3, 512)
        expect = np.packbits(np.random.default_rng(1).integers(0, 2, 2048, dtype=np.uint8)).tobytes()
        assert [k.key for k in keys] == [expect[64 * i : 64 * (i + 1)] for i in range(3)]
        assert owner(op="commit", bid=mid, confirmed=True) == {}  # the pending block survived the reader's open
        assert reader.available_keys(512) == 1 + 4  # the owner's new block is visible to the reader at once
        st = owner(op="stats")
        assert st["delivered_keys"] == 3 and st["confirmed_blocks"] == 2  # the reader's delivery, seen by the owner
        reader.close()
    finally:
        owner.kill()


def test_concurrent_take_keys_from_two_processes_deliver_each_key_once(tmp_path):
    path = tmp_path / "aau.db"
    n_blocks, block_bits = 30, 8 * 256  # 8 keys of 256 bits per block
    blocks = {}
    with KeyStore(path, owner=True) as ks:
        for i in range(n_blocks):
            bid, b = uuid.UUID(int=100 + i), bits(100 + i, block_bits)
            ks.stage(bid, b, META)
            ks.commit(bid, confirmed=True)
            blocks[str(bid)] = np.packbits(b).tobytes()
    agents = [Agent(path) for _ in range(2)]
    try:
        for k, a in enumerate(agents):
            a.send(op="take_all", seed=k)  # both drain the store at the same time
        got = [a.recv()["keys"] for a in agents]
    finally:
        for a in agents:
            a.kill()
    slices = [(b, o) for g in got for b, o, _ in g]
    assert len(slices) == len(set(slices)) == n_blocks * 8  # every key delivered, none twice
    for g in got:
        for b, o, hexkey in g:
            assert bytes.fromhex(hexkey) == blocks[b][o // 8 : o // 8 + 32]
    with KeyStore(path) as ks:
        st = ks.stats()
        assert st["delivered_keys"] == n_blocks * 8 and st["unallocated_bits"] == 0


def test_a_second_owner_is_refused_in_process_and_across_processes(tmp_path):
    path = tmp_path / "du.db"
    with KeyStore(path, owner=True):
        with pytest.raises(KeyStoreError, match=rf"already has an owner \(pid {os.getpid()}"):
            KeyStore(path, owner=True)
        other = Agent(path, "owner")
        other.kill()
        assert other.p.returncode == 3 and f"already has an owner (pid {os.getpid()}" in other.hello["error"]
        with KeyStore(path) as reader:  # readers are never refused
            assert reader.available_keys(256) == 0
    other = Agent(path, "owner")  # the lock went with close()
    try:
        assert other.hello["ok"]
        with pytest.raises(KeyStoreError, match=rf"already has an owner \(pid {other.p.pid}"):
            KeyStore(path, owner=True)
    finally:
        other.kill()
    with KeyStore(path, owner=True):  # a SIGKILLed owner's lock is gone with its process
        pass


def test_keystore_block_reports_a_second_owner_in_one_line(tmp_path):
    from blocks.keystore_du import KeystoreDu
    from qkdflow.runtime.block import BlockError

    path = str(tmp_path / "du.db")
    with KeyStore(path, owner=True):
        with pytest.raises(BlockError, match=r"^store_path: key store .* already has an owner \(pid \d+") as e:
            KeystoreDu("store_d", store_path=path).start()
        assert "\n" not in str(e.value)


def test_pending_cleanup_only_by_the_owner(tmp_path):
    path = tmp_path / "aau.db"
    owner = Agent(path, "owner")
    pending = str(uuid.UUID(int=7))
    try:
        owner(op="stage", bid=pending, seed=7, n=1024)
    finally:
        owner.kill()  # SIGKILL mid-block: the pending copy stays on disk
    for _ in range(2):
        with KeyStore(path) as reader:
            assert reader.discarded_pending == 0 and reader.stats()["pending_blocks"] == 1
    with KeyStore(path, owner=True) as ks:
        assert ks.discarded_pending == 1 and ks.stats()["pending_blocks"] == 0
        with pytest.raises(KeyNotFound):
            ks.block_info(pending)


def test_store_written_before_the_confirmed_state_opens_with_blocks_unconfirmed(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE blocks (block_id TEXT PRIMARY KEY, state TEXT NOT NULL CHECK (state IN ('pending',"
        " 'committed')), key BLOB NOT NULL, length_bits INTEGER NOT NULL CHECK (length_bits > 0), qber REAL NOT"
        " NULL, leak_bits INTEGER NOT NULL, eps_sec REAL NOT NULL, eps_cor REAL NOT NULL, created_s REAL NOT NULL,"
        " committed_s REAL, commit_order INTEGER, next_offset_bits INTEGER NOT NULL DEFAULT 0);")
    bid = str(uuid.UUID(int=9))
    con.execute("INSERT INTO blocks VALUES (?, 'committed', ?, 512, 0.01, 5, 1e-10, 1e-12, 0, 0, 1, 0)",
                (bid, b"\x5a" * 64))
    con.commit()
    con.close()
    with KeyStore(path, owner=True) as ks:
        assert ks.committed_ids() == [bid] and ks.available_keys(256) == 0  # not known to be at the peer
        assert ks.reconcile([bid]) == [] and ks.take_keys(2, 256)[1].key == b"\x5a" * 32


# ---------------------------------------------------------------- crash windows at the store level

def _du_aau(tmp_path):
    return KeyStore(tmp_path / "du.db", owner=True), KeyStore(tmp_path / "aau.db", owner=True)


def _restart(ks):
    ks.close()
    return KeyStore(ks.path, owner=True)


def test_crash_after_du_commit_before_aau_commit_nothing_delivered_and_reconcile_drops(tmp_path):
    du, aau = _du_aau(tmp_path)
    bid = uuid.uuid4()
    key = bits(5, 4096)
    du.stage(bid, key, META)
    aau.stage(bid, key, META)
    du.commit(bid)  # DU commits and sends "committed" ... the AAU is killed before its commit
    # meanwhile a KMS on the DU's store can deliver nothing from it, nor accept a (forged) descriptor for it
    kms_du = KeyStore(du.path)
    assert kms_du.available_keys(256) == 0
    with pytest.raises(InsufficientKey):
        kms_du.take_keys(1, 256)
    with pytest.raises(KeyNotConfirmed):
        kms_du.accept_peer_keys([KeyDescriptor(str(uuid.uuid4()), str(bid), 0, 256)])
    aau = _restart(aau)
    assert aau.discarded_pending == 1 and aau.committed_ids() == []
    du = _restart(du)  # both nodes restart; the hello exchange:
    assert aau.reconcile(du.committed_ids()) == []
    assert du.reconcile(aau.committed_ids()) == [str(bid)]
    assert du.committed_ids() == aau.committed_ids() == [] and kms_du.stats()["delivered_keys"] == 0
    for ks in (du, aau, kms_du):
        ks.close()


def test_crash_after_aau_commit_before_done_aau_delivers_du_confirms_at_reconcile(tmp_path):
    du, aau = _du_aau(tmp_path)
    bid = uuid.uuid4()
    key = bits(6, 4096)
    du.stage(bid, key, META)
    aau.stage(bid, key, META)
    du.commit(bid)
    aau.commit(bid, confirmed=True)  # the AAU's commit implies the DU's: deliverable there at once
    sent = aau.take_keys(2, 256)  # master KME hands out keys ... and the DU is killed before "done" arrives
    with pytest.raises(KeyNotConfirmed):  # a slave fetch before the DU's confirmation is refused, not lost
        du.accept_peer_keys([k.descriptor for k in sent])
    du = _restart(du)
    assert du.discarded_pending == 0 and du.confirmed_ids() == []
    assert aau.reconcile(du.committed_ids()) == [] and du.reconcile(aau.committed_ids()) == []
    assert du.confirmed_ids() == aau.confirmed_ids() == [str(bid)]
    du.accept_peer_keys([k.descriptor for k in sent])
    assert [k.key for k in du.get_by_ids([k.key_id for k in sent])] == [k.key for k in sent]
    for ks in (du, aau):
        ks.close()


def test_crash_before_du_commit_leaves_nothing_anywhere(tmp_path):
    du, aau = _du_aau(tmp_path)
    bid = uuid.uuid4()
    du.stage(bid, bits(7, 1024), META)
    aau.stage(bid, bits(7, 1024), META)
    du, aau = _restart(du), _restart(aau)
    assert du.discarded_pending == aau.discarded_pending == 1
    assert du.reconcile(aau.committed_ids()) == aau.reconcile(du.committed_ids()) == []
    assert du.stats()["committed_blocks"] == aau.stats()["committed_blocks"] == 0
    du.close()
    aau.close()


# ---------------------------------------------------------------- the store stage's protocol (blocks)

class _Wire:
    """keystore_aau and keystore_du wired through a FIFO of peer messages, stepped one message at a time."""

    def __init__(self, tmp_path, reserve=64):
        from collections import deque

        from blocks.keystore_aau import KeystoreAau
        from blocks.keystore_du import KeystoreDu

        self.q, self.sent, self.calls = deque(), [], []
        self.aau = KeystoreAau("store_a", store_path=str(tmp_path / "aau.db"), auth_reserve_bits=reserve)
        self.du = KeystoreDu("store_d", store_path=str(tmp_path / "du.db"), auth_reserve_bits=reserve)
        for side, b in (("aau", self.aau), ("du", self.du)):
            b._emit = lambda port, msg, side=side: self._route(side, port, msg)
            b._replenish = lambda bits, entry_id=None, send=True, side=side: self.calls.append(
                (side, "replenish", entry_id, send, bits.copy()))
            b._authorize = lambda entry_id, side=side: self.calls.append((side, "authorize", entry_id))
        self.aau.start()
        self.du.start()
        self.run()

    def _route(self, side, port, msg):
        if port == "peer":
            self.sent.append((side, msg.get("type")))
            self.q.append((self.du if side == "aau" else self.aau, msg))

    def step(self):
        target, msg = self.q.popleft()
        target.handle("peer", msg)
        return msg["type"]

    def run(self):
        while self.q:
            self.step()

    def feed(self, num, key):
        from qkdflow.distill.protocol import pack_bits

        info = {"num": num, "qber_key": 0.02, "leak_ec": 100, "leak_verify": 61, "eps_sec": 1e-10,
                "eps_cor": 1e-12, "final_bits": int(key.size), "n_key": 1000}
        bid = str(uuid.UUID(int=1000 + num))
        for b in (self.aau, self.du):
            b.handle("key", {"type": "key", "block": bid, "num": num, "bits": pack_bits(key), "n_bits": int(key.size),
                             "info": dict(info)})
        return bid


def test_store_stage_confirms_on_done_and_calls_the_authentication_hooks_in_order(tmp_path):
    w = _Wire(tmp_path)
    key = bits(11, 64 + 1024)
    bid = w.feed(1, key)
    assert [w.step() for _ in range(2)] == ["stage", "staged"]
    assert [c[:4] for c in w.calls] == [("du", "replenish", bid, False)] and w.q[0][1]["type"] == "committed"
    assert np.array_equal(w.calls[0][4], key[:64])
    assert w.du.store.block_info(bid).state == "committed" and not w.du.store.block_info(bid).deliverable
    assert w.aau.store.block_info(bid).state == "pending"
    assert w.step() == "committed"  # the AAU commits (confirmed) and answers "done"
    assert w.calls[1][:4] == ("aau", "replenish", bid, True) and np.array_equal(w.calls[1][4], key[:64])
    assert w.aau.store.block_info(bid).deliverable and not w.du.store.block_info(bid).deliverable
    assert w.du.store.available_keys(256) == 0 and w.aau.store.available_keys(256) == 4
    assert w.du._active is not None  # the DU keeps the block open until "done"
    assert w.step() == "done"
    assert w.calls[2:] == [("du", "authorize", bid)]
    assert w.du.store.block_info(bid).deliverable and w.du._active is None
    assert w.du.counters["stored_bits"] == w.aau.counters["stored_bits"] == 1024
    assert len(w.du.records) == w.aau.report()["blocks_committed"] == 1
    with KeyStore(w.du.store_path) as kd, KeyStore(w.aau.store_path) as ka:
        sent = ka.take_keys(4, 256)
        kd.accept_peer_keys([k.descriptor for k in sent])
        assert b"".join(k.key for k in kd.get_by_ids([k.key_id for k in sent])) == np.packbits(key[64:]).tobytes()
    w.aau.store.close()
    w.du.store.close()


def test_store_stage_restart_after_lost_done_confirms_at_the_du_via_hello(tmp_path):
    w = _Wire(tmp_path)
    bid = w.feed(1, bits(12, 64 + 512))
    for _ in range(3):
        w.step()  # stage, staged, committed: the AAU committed and queued "done" ...
    w.q.clear()  # ... which never arrives: both nodes go down
    assert not w.du.store.block_info(bid).deliverable and w.aau.store.block_info(bid).deliverable
    w.du.store.close()
    w.aau.store.close()
    w2 = _Wire(tmp_path)  # restart: the hello exchange reconciles
    assert w2.du.store.confirmed_ids() == w2.aau.store.confirmed_ids() == [bid]
    assert w2.du.counters["reconciled_confirmed_blocks"] == 1 and w2.du.counters["reconciled_dropped_blocks"] == 0
    w2.du.store.close()
    w2.aau.store.close()


def test_store_stage_restart_after_du_commit_drops_the_du_copy(tmp_path):
    w = _Wire(tmp_path)
    bid = w.feed(1, bits(13, 64 + 512))
    w.step()
    w.step()  # stage, staged: the DU committed and queued "committed" ... the AAU is killed before it reads it
    w.q.clear()
    assert w.du.store.committed_ids() == [bid] and w.du.store.available_keys(256) == 0
    w.du.store.close()
    w.aau.store.close()
    w2 = _Wire(tmp_path)
    assert w2.aau.store.discarded_pending == 1
    assert w2.du.store.committed_ids() == w2.aau.store.committed_ids() == []
    assert w2.du.counters["reconciled_dropped_blocks"] == 1
    w2.du.store.close()
    w2.aau.store.close()


def test_store_stage_unexpected_message_after_du_commit_stops_without_dropping(tmp_path):
    from qkdflow.runtime.block import BlockError

    w = _Wire(tmp_path)
    bid = w.feed(1, bits(14, 64 + 512))
    w.step()
    w.step()
    w.q.clear()
    blk = w.du._active
    bogus = envelope("store", "staged", bid, 1, blk.seq_in)
    with pytest.raises(BlockError, match="after the DU's commit"):
        w.du.handle("peer", bogus)
    assert w.du.store.committed_ids() == [bid]  # left to the start-up reconciliation
    w.du.store.close()
    w.aau.store.close()
