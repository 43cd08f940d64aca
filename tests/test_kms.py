"""ETSI GS QKD 014 key manager: API over mutual TLS on loopback, every error case, once-only delivery."""
from __future__ import annotations

import base64
import random
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdflow import kms
from qkdflow.distill.keystore import KeyBlockMeta, KeyStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_test_ca import make_test_pki  # noqa: E402

META = KeyBlockMeta(qber=0.02, leak_bits=100, eps_sec=1e-10, eps_cor=1e-12)
STATUS_FIELDS = {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size", "stored_key_count",
                 "max_key_count", "max_key_per_request", "max_key_size", "min_key_size", "max_SAE_ID_count"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    paths = make_test_pki(str(d), ["kme-aau", "kme-du"], ["sae-aau", "sae-du", "sae-aau2", "sae-eve"])
    rogue = tmp_path_factory.mktemp("rogue")
    paths["rogue"] = make_test_pki(str(rogue), [], ["sae-aau"], ca_cn="rogue CA")["sae-aau"]
    return paths


def fill(stores, n_blocks=2, block_bytes=1024, seed=1):
    import random

    rnd = random.Random(seed)
    ids = {}
    for _ in range(n_blocks):
        bid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        key = bytes(rnd.getrandbits(8) for _ in range(block_bytes))
        for s in stores:
            s.stage(bid, key, META)
            s.commit(bid, confirmed=True)  # both ends hold it: deliverable
        ids[bid] = key
    return ids


class Link:
    """A master KME (AAU side) and a slave KME (DU side) on loopback, each over its own store."""

    def __init__(self, pki, n_blocks=2, block_bytes=1024):
        self.pki = pki
        self.a, self.b = KeyStore(":memory:"), KeyStore(":memory:")
        self.blocks = fill([self.a, self.b], n_blocks, block_bytes)  # block id -> key bytes
        self.ma = kms.KeyManager(self.a, kme_id="kme-aau", peer_kme_id="kme-du", role="master",
                                 local_sae_ids=["sae-aau", "sae-aau2"], peer_sae_ids=["sae-du"])
        self.mb = kms.KeyManager(self.b, kme_id="kme-du", peer_kme_id="kme-aau", role="slave",
                                 local_sae_ids=["sae-du"], peer_sae_ids=["sae-aau", "sae-aau2"])
        self.sa = kms.make_server(self.ma, cert=pki["kme-aau"][0], key=pki["kme-aau"][1], ca=pki["ca"],
                                  sae_map={"sae-eve": "not-registered"})
        self.sb = kms.make_server(self.mb, cert=pki["kme-du"][0], key=pki["kme-du"][1], ca=pki["ca"])
        self.threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                        for s in (self.sa, self.sb)]
        for t in self.threads:
            t.start()

    def conn(self, server, sae, cert=None):
        ctx = ssl.create_default_context(cafile=self.pki["ca"])
        if cert is not None:
            ctx.load_cert_chain(*cert)
        elif sae is not None:
            ctx.load_cert_chain(*self.pki[sae])
        return http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=ctx, timeout=10)

    def close(self):
        for s in (self.sa, self.sb):
            s.shutdown()
            s.server_close()
        self.a.close()
        self.b.close()

    def state(self):
        return self.a.stats(), self.b.stats()


def call(c, method, path, body=None, raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read()
    assert r.getheader("Content-Type") == "application/json"
    return r.status, json.loads(text)


@pytest.fixture
def link(pki):
    lk = Link(pki)
    yield lk
    lk.close()


# ---- happy path --------------------------------------------------------------------------------------
def test_status_fields_exactly_as_the_standard(link):
    c = link.conn(link.sa, "sae-aau")
    st_, body = call(c, "GET", "/api/v1/keys/sae-du/status")
    assert st_ == 200 and set(body) == STATUS_FIELDS
    assert body["source_KME_ID"] == "kme-aau" and body["target_KME_ID"] == "kme-du"
    assert body["master_SAE_ID"] == "sae-aau" and body["slave_SAE_ID"] == "sae-du"
    assert body["key_size"] == 256 and body["stored_key_count"] == 2 * 1024 * 8 // 256
    assert body["max_SAE_ID_count"] == 0 and body["min_key_size"] <= 256 <= body["max_key_size"]


def test_enc_keys_then_dec_keys_at_peer_gives_same_bytes_once(link):
    ca, cb = link.conn(link.sa, "sae-aau"), link.conn(link.sb, "sae-du")  # keep-alive: many calls each
    st1, k1 = call(ca, "POST", "/api/v1/keys/sae-du/enc_keys", {"number": 3, "size": 512})
    st2, k2 = call(ca, "GET", "/api/v1/keys/sae-du/enc_keys?number=2&size=128")
    st3, k3 = call(ca, "GET", "/api/v1/keys/sae-du/enc_keys")
    assert (st1, st2, st3) == (200, 200, 200)
    assert [len(base64.b64decode(k["key"])) for k in k1["keys"] + k2["keys"] + k3["keys"]] == [64] * 3 + [16] * 2 + [32]
    for k in k1["keys"] + k2["keys"] + k3["keys"]:
        assert set(k) == {"key_ID", "key"} and str(uuid.UUID(k["key_ID"])) == k["key_ID"]
    all_ids = [k["key_ID"] for k in k1["keys"] + k2["keys"] + k3["keys"]]
    assert len(set(all_ids)) == 6 and len({k["key"] for k in k1["keys"] + k2["keys"] + k3["keys"]}) == 6
    # the slave gets the same bytes for the ids, by POST (several) and GET (one)
    st_, d1 = call(cb, "POST", "/api/v1/keys/sae-aau/dec_keys", {"key_IDs": [{"key_ID": k["key_ID"]} for k in k1["keys"]]})
    assert st_ == 200 and d1 == k1
    for k in k2["keys"] + k3["keys"]:
        st_, d = call(cb, "GET", f"/api/v1/keys/sae-aau/dec_keys?key_ID={k['key_ID']}")
        assert st_ == 200 and d == {"keys": [k]}
    # keys are delivered once at each end
    st_, again = call(cb, "POST", "/api/v1/keys/sae-aau/dec_keys", {"key_IDs": [{"key_ID": k1["keys"][0]["key_ID"]}]})
    assert st_ == 400 and "already delivered" in again["message"]
    sa, sb = link.state()
    assert sa["delivered_bits"] == sb["delivered_bits"] == 3 * 512 + 2 * 128 + 256


def test_key_bytes_are_the_store_bits(link):
    c = link.conn(link.sa, "sae-aau")
    _, body = call(c, "GET", "/api/v1/keys/sae-du/enc_keys?number=2&size=256")
    f = kms.parse_key_id(body["keys"][1]["key_ID"])
    assert (f.offset_bits, f.size_bits) == (256, 256)
    first_block = next(iter(link.blocks.values()))  # commit order = fill order
    assert [base64.b64decode(k["key"]) for k in body["keys"]] == [first_block[:32], first_block[32:64]]


# ---- 400 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path,body,raw,needle", [
    ("GET", "/api/v1/keys/sae-du/enc_keys?size=12", None, None, "multiple of 8"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"size": 1001}, None, "multiple of 8"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"size": 8192}, None, "size must be in"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"size": 32}, None, "size must be in"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"number": 0}, None, "number must be in"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"number": 129}, None, "number must be in"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"number": "2"}, None, "number must be an integer"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"number": True}, None, "number must be an integer"),
    ("GET", "/api/v1/keys/sae-du/enc_keys?number=two", None, None, "number must be"),
    ("GET", "/api/v1/keys/sae-du/enc_keys?count=2", None, None, "unknown query parameter"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", None, b"{\"number\": 2", "malformed JSON"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", None, b"[1, 2]", "JSON object"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"numbr": 2}, None, "unknown request field"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"additional_slave_SAE_IDs": ["sae-x"]}, None, "not supported"),
    ("POST", "/api/v1/keys/sae-du/enc_keys", {"extension_mandatory": [{"route": 1}]}, None, "unsupported extension"),
    ("POST", "/api/v1/keys/sae-du/dec_keys", {"key_IDs": [{"key_ID": str(uuid.UUID(int=7))}]}, None,
     "master end"),
])
def test_bad_requests_are_400_with_message_and_consume_nothing(link, method, path, body, raw, needle):
    before = link.state()
    c = link.conn(link.sa, "sae-aau")
    st_, err = call(c, method, path, body, raw)
    assert st_ == 400 and needle in err["message"], err
    assert link.state() == before
    st_, _ = call(c, "GET", "/api/v1/keys/sae-du/status")  # the same connection still works
    assert st_ == 200


def test_unknown_or_foreign_key_ids_are_400_and_consume_nothing(link):
    ca, cb = link.conn(link.sa, "sae-aau"), link.conn(link.sb, "sae-du")
    _, k = call(ca, "POST", "/api/v1/keys/sae-du/enc_keys", {"number": 2})
    good = [e["key_ID"] for e in k["keys"]]
    other_block = kms.key_id_for(str(uuid.UUID(int=5, version=4)), 0, 256, "sae-aau", "sae-du")
    other_pair = kms.key_id_for(next(iter(link.blocks)), 512, 256, "sae-aau2", "sae-du")
    before = link.state()
    for ids in ([str(uuid.uuid4())], ["not-a-uuid"], [other_block], [other_pair], [good[0], good[0]],
                [good[0], str(uuid.uuid4())]):
        st_, err = call(cb, "POST", "/api/v1/keys/sae-aau/dec_keys", {"key_IDs": [{"key_ID": i} for i in ids]})
        assert st_ == 400 and err["message"] and err["details"] == [{"key_IDs": ids}], (ids, err)
        assert link.state() == before, ids
    for bad in ({"key_IDs": "x"}, {"key_IDs": [{"id": good[0]}]}, {"keys": []}, {}):
        st_, err = call(cb, "POST", "/api/v1/keys/sae-aau/dec_keys", bad)
        assert st_ == 400 and err["message"]
    st_, err = call(cb, "POST", "/api/v1/keys/sae-aau/enc_keys", {})
    assert st_ == 400 and "slave end" in err["message"]
    assert link.state() == before
    # ... and the real ids still work afterwards
    st_, d = call(cb, "POST", "/api/v1/keys/sae-aau/dec_keys", {"key_IDs": [{"key_ID": i} for i in good]})
    assert st_ == 200 and d == k


def test_key_for_one_sae_pair_is_refused_to_another_slave_sae(link):
    ca2 = link.conn(link.sa, "sae-aau2")
    _, k = call(ca2, "POST", "/api/v1/keys/sae-du/enc_keys", {"number": 1})
    cb = link.conn(link.sb, "sae-du")
    # sae-du asks for it naming the wrong master SAE: refused; naming the right one: served
    st_, _ = call(cb, "POST", "/api/v1/keys/sae-aau/dec_keys", {"key_IDs": [{"key_ID": k["keys"][0]["key_ID"]}]})
    assert st_ == 400
    st_, d = call(cb, "POST", "/api/v1/keys/sae-aau2/dec_keys", {"key_IDs": [{"key_ID": k["keys"][0]["key_ID"]}]})
    assert st_ == 200 and d == k


def test_out_of_order_fetch_at_the_slave_never_delivers_twice(link):
    """Documented limitation: the slave's one cursor per block refuses a key behind one fetched already."""
    ca, cb = link.conn(link.sa, "sae-aau"), link.conn(link.sb, "sae-du")
    _, k = call(ca, "POST", "/api/v1/keys/sae-du/enc_keys", {"number": 2})
    k1, k2 = (e["key_ID"] for e in k["keys"])
    assert call(cb, "GET", f"/api/v1/keys/sae-aau/dec_keys?key_ID={k2}")[0] == 200
    st_, err = call(cb, "GET", f"/api/v1/keys/sae-aau/dec_keys?key_ID={k1}")
    assert st_ == 400 and "passed over" in err["message"]


# ---- 401 ---------------------------------------------------------------------------------------------
def test_unauthorized_is_401_and_server_keeps_serving(link):
    before = link.state()
    cases = [
        (link.conn(link.sa, None), "/api/v1/keys/sae-du/enc_keys", "client certificate required"),
        (link.conn(link.sa, "sae-eve"), "/api/v1/keys/sae-du/enc_keys", "not registered"),  # mapped, unknown
        (link.conn(link.sa, "sae-du"), "/api/v1/keys/sae-du/enc_keys", "not registered"),   # other side's SAE
        (link.conn(link.sa, "sae-aau"), "/api/v1/keys/sae-nobody/enc_keys", "not reachable"),
        (link.conn(link.sa, "sae-aau"), "/api/v1/keys/sae-nobody/status", "not reachable"),
        (link.conn(link.sb, "sae-du"), "/api/v1/keys/sae-nobody/dec_keys?key_ID=" + str(uuid.uuid4()), "not reachable"),
    ]
    for c, path, needle in cases:
        st_, err = call(c, "GET", path)
        assert st_ == 401 and needle in err["message"], (path, err)
    assert link.state() == before


def test_client_certificate_from_another_ca_fails_the_handshake_server_survives(link):
    c = link.conn(link.sa, None, cert=link.pki["rogue"])
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
        call(c, "GET", "/api/v1/keys/sae-du/status")
    st_, body = call(link.conn(link.sa, "sae-aau"), "GET", "/api/v1/keys/sae-du/status")
    assert st_ == 200 and body["stored_key_count"] == 64
    assert link.ma.counters.get("tls_handshake_failed", 0) >= 1


# ---- 503 ---------------------------------------------------------------------------------------------
def test_exhaustion_is_503_and_consumes_nothing(pki):
    lk = Link(pki, n_blocks=1, block_bytes=96)  # 3 keys of 256 bits
    try:
        c = lk.conn(lk.sa, "sae-aau")
        before = lk.state()
        st_, err = call(c, "POST", "/api/v1/keys/sae-du/enc_keys", {"number": 4})
        assert st_ == 503 and "not enough key" in err["message"]
        assert lk.state() == before
        st_, k = call(c, "POST", "/api/v1/keys/sae-du/enc_keys", {"number": 3})
        assert st_ == 200 and len(k["keys"]) == 3
        st_, err = call(c, "GET", "/api/v1/keys/sae-du/enc_keys")
        assert st_ == 503
        assert call(c, "GET", "/api/v1/keys/sae-du/status")[1]["stored_key_count"] == 0
    finally:
        lk.close()


# ---- key ID codec ------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.uuids(version=4), st.integers(0, (1 << 32) - 1), st.integers(1, 4096), st.text(max_size=20),
       st.text(max_size=20))
def test_key_id_round_trip(block, offset_bytes, size_bytes, master, slave):
    kid = kms.key_id_for(str(block), 8 * offset_bytes, 8 * size_bytes, master, slave)
    u = uuid.UUID(kid)
    assert u.version == 8 and u.variant == uuid.RFC_4122
    f = kms.parse_key_id(kid)
    assert (f.offset_bits, f.size_bits) == (8 * offset_bytes, 8 * size_bytes)
    assert f.block_tag == kms._block_tag(str(block)) and f.pair_tag == kms._pair_tag(master, slave)


def test_key_id_rejects_bad_slices():
    b = str(uuid.uuid4())
    for off, size in ((4, 256), (0, 12), (0, 0), (0, 8 * 4097), (8 << 32, 256)):
        with pytest.raises(ValueError):
            kms.key_id_for(b, off, size, "a", "b")
    with pytest.raises(ValueError):
        kms.parse_key_id(str(uuid.uuid4()))


def test_key_manager_rejects_bad_configuration():
    s = KeyStore(":memory:")
    kw = dict(kme_id="k", peer_kme_id="p", local_sae_ids=["a"], peer_sae_ids=["b"])
    for bad in (dict(role="both"), dict(role="master", key_size_bits=100), dict(role="master", max_key_size_bits=1 << 16),
                dict(role="master", local_sae_ids=[]), dict(role="master", max_key_per_request=0)):
        with pytest.raises(ValueError):
            kms.KeyManager(s, **{**kw, **bad})


# ---- the command -------------------------------------------------------------------------------------
def test_qkdflow_kms_command_serves_and_stops(pki, tmp_path, ports, cli_env):
    path = str(tmp_path / "aau.db")
    s = KeyStore(path, owner=True)  # the flowgraph's key-store block, kept open: the KMS runs beside it
    fill([s], 1, 256)
    port = ports(1)
    cmd = [sys.executable, "-m", "qkdflow.runtime.cli", "kms", "--store", path, "--role", "master",
           "--sae-id", "sae-aau", "--peer-sae-id", "sae-du", "--peer-kme", "kme-du", "--cert", pki["kme-aau"][0],
           "--key", pki["kme-aau"][1], "--ca", pki["ca"], "--port", str(port)]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=cli_env)
    try:
        ctx = ssl.create_default_context(cafile=pki["ca"])
        ctx.load_cert_chain(*pki["sae-aau"])
        deadline = time.monotonic() + 20
        while True:
            try:
                c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
                st_, body = call(c, "GET", "/api/v1/keys/sae-du/status")
                break
            except (ConnectionRefusedError, ssl.SSLError, OSError):
                if time.monotonic() > deadline or p.poll() is not None:
                    raise
                time.sleep(0.1)
        assert st_ == 200 and body["source_KME_ID"] == "kme-aau" and body["stored_key_count"] == 8
        # the owner keeps writing while the KMS serves: a confirmed block counts at once, an unconfirmed one never
        for seed, confirmed in ((2, True), (3, False)):
            bid = str(uuid.UUID(int=seed, version=4))
            s.stage(bid, random.Random(seed).randbytes(256), META)
            s.commit(bid, confirmed=confirmed)
        assert call(c, "GET", "/api/v1/keys/sae-du/status")[1]["stored_key_count"] == 16
        # another process-local deliverer (a fronthaul encryptor) and the KMS take from the same store
        local = [k.key for k in s.take_keys(3, 256)]
        st_, got = call(c, "GET", "/api/v1/keys/sae-du/enc_keys?number=13")
        assert st_ == 200 and len(got["keys"]) == 13
        remote = [base64.b64decode(k["key"]) for k in got["keys"]]
        unconfirmed = random.Random(3).randbytes(256)
        assert len(set(local + remote)) == 16  # each key once (random blocks: equal bytes = the same slice)
        assert not any(k in unconfirmed for k in local + remote)
        st_, err = call(c, "GET", "/api/v1/keys/sae-du/enc_keys")
        assert st_ == 503 and s.stats()["delivered_keys"] == 16
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
        s.close()
    assert p.returncode == 0, err
    bad = subprocess.run(cmd[:-2] + ["--port", str(port), "--sae-map", "oops"], capture_output=True, text=True,
                         env=cli_env, timeout=30)
    assert bad.returncode == 2 and "--sae-map" in bad.stderr and "Traceback" not in bad.stderr


def test_only_confirmed_blocks_serve_keys_and_an_unconfirmed_one_is_503_retry_at_the_slave(pki):
    lk = Link(pki, n_blocks=0)
    try:
        bid, key = str(uuid.UUID(int=77, version=4)), bytes(range(256)) * 2
        for s in (lk.a, lk.b):
            s.stage(bid, key, META)
        lk.b.commit(bid)  # DU committed, said "committed"; the AAU then commits, confirmed (its "done" in flight)
        lk.a.commit(bid, confirmed=True)
        ca, cb = lk.conn(lk.sa, "sae-aau"), lk.conn(lk.sb, "sae-du")
        assert call(ca, "GET", "/api/v1/keys/sae-du/status")[1]["stored_key_count"] == 16
        assert call(cb, "GET", "/api/v1/keys/sae-aau/status")[1]["stored_key_count"] == 0
        st_, k = call(ca, "POST", "/api/v1/keys/sae-du/enc_keys", {"number": 2})
        assert st_ == 200
        ids = {"key_IDs": [{"key_ID": x["key_ID"]} for x in k["keys"]]}
        before = lk.b.stats()
        st_, err = call(cb, "POST", "/api/v1/keys/sae-aau/dec_keys", ids)
        assert st_ == 503 and "retry" in err["message"] and "not yet confirmed" in err["message"]
        assert lk.b.stats() == before  # nothing recorded or delivered at the slave
        lk.b.confirm(bid)  # the AAU's "done" arrives
        st_, d = call(cb, "POST", "/api/v1/keys/sae-aau/dec_keys", ids)
        assert st_ == 200 and d == k and [base64.b64decode(x["key"]) for x in d["keys"]] == [key[:32], key[32:64]]
        assert lk.mb.counters["not_yet_confirmed"] == 1
        # a block committed but unconfirmed at the master end serves nothing either
        other = str(uuid.UUID(int=78, version=4))
        lk.a.stage(other, b"\x01" * 64, META)
        lk.a.commit(other)
        assert call(ca, "GET", "/api/v1/keys/sae-du/status")[1]["stored_key_count"] == 14
    finally:
        lk.close()
