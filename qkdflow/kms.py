"""Key manager (KME): the ETSI GS QKD 014 V1.1.1 REST API over mutual TLS, serving keys from a qkdflow key store.

    qkdflow kms --store aau.db --role master --sae-id sae-aau --peer-sae-id sae-du --kme-id kme-aau \\
                --peer-kme kme-du --cert kme-aau.pem --key kme-aau.key --ca ca.pem --port 8443

Calls (ETSI GS QKD 014 V1.1.1 Sec. 5; shared/reference/postprocessing.md Sec. 5.1):

* ``GET  /api/v1/keys/{slave_SAE_ID}/status``                 -> Status
* ``GET  /api/v1/keys/{slave_SAE_ID}/enc_keys?number=&size=``  -> Key container
* ``POST /api/v1/keys/{slave_SAE_ID}/enc_keys``  {number, size, additional_slave_SAE_IDs, extension_mandatory,
  extension_optional}
* ``GET  /api/v1/keys/{master_SAE_ID}/dec_keys?key_ID=``       -> Key container
* ``POST /api/v1/keys/{master_SAE_ID}/dec_keys`` {key_IDs: [{key_ID}], key_IDs_extension}
* errors: 400 (bad request), 401 (unauthorized), 503 (server side, incl. not enough key) with ``{"message": ...,
  "details": [...]}``; every failed request consumes no key.

Identity: the calling SAE is the client certificate's subject CN (or ``--sae-map CN=SAE_ID``). The TLS layer
requests a client certificate but does not require one, so a missing certificate or an unknown SAE gets an HTTP
401 with a JSON body; a certificate that does not chain to ``--ca`` fails the TLS handshake itself (a TLS server
cannot answer HTTP over a connection it refused to authenticate) and the server keeps serving.

**Store sharing.** The KME opens its side's store as a reader (``KeyStore(path)``, not the owner), so it runs
beside the flowgraph whose key-store block fills that store; every delivery is one write transaction, so keys are
handed out once across all processes using the store.  Only *confirmed* blocks (committed at both ends, see
``qkdflow.distill.keystore``) serve keys and count in ``stored_key_count``.

**Key IDs without KME-to-KME traffic.** Both KMEs of a link hold the same confirmed key blocks under the same
block ids (the distillation blocks guarantee it).  The master KME cuts keys with ``KeyStore.take_keys`` and names
each key by a *deterministic* UUID derived from where its bits live; the slave KME decodes the UUID back to
(block, offset, size), records the slice with ``accept_peer_keys`` and delivers it once with ``get_by_ids``.
Each side marks keys delivered in its own store, independently.  The UUID is an RFC 9562 version-8 UUID whose
122 free bits carry, most significant first:

====================  ======  =========================================================================
field                 bits    meaning
====================  ======  =========================================================================
block tag             56      first 56 bits of SHA-256(block UUID bytes); resolved against the committed
                              blocks of the store (an ambiguous tag is refused, probability ~N^2/2^57)
offset                32      byte offset of the key in its block (blocks up to 4 GiB)
size - 1              12      key size in bytes minus one (keys up to 32768 bits)
SAE-pair tag          22      first 22 bits of SHA-256(master SAE id NUL slave SAE id): the slave KME hands
                              a key only to the slave SAE and for the master SAE it was cut for
====================  ======  =========================================================================

A key ID naming a block that the slave end has committed but not yet confirmed (the AAU confirms at its commit,
the DU one message later) gets a 503 "retry": the key becomes available within a message round trip.
Only one end of a link allocates key (the store's rule), so a KME runs as ``--role master`` (serves
``enc_keys``) or ``--role slave`` (serves ``dec_keys``); the other call gets a 400 naming the right KME.
Limitation inherited from ``KeyStore.accept_peer_keys`` (one allocation cursor per block): the slave end must
fetch the keys of one block in the order the master cut them; a key fetched out of order leaves the earlier
keys of that block undeliverable at the slave (refused with 400, never handed out twice).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from qkdflow.distill.keystore import (
    AlreadyDelivered,
    InsufficientKey,
    KeyDescriptor,
    KeyNotConfirmed,
    KeyNotFound,
    KeyStore,
    KeyStoreError,
)

__all__ = [
    "COMMAND",
    "add_arguments",
    "main",
    "ApiError",
    "KeyIdFields",
    "key_id_for",
    "parse_key_id",
    "BlockResolver",
    "take_keys_with_ids",
    "fetch_keys_by_ids",
    "shared_store",
    "release_store",
    "KeyManager",
    "KmeServer",
    "make_server",
]

COMMAND = "kms"

# ---- deterministic key IDs -----------------------------------------------------------------------------
_BLOCK_TAG_BITS, _OFFSET_BITS, _SIZE_BITS, _PAIR_BITS = 56, 32, 12, 22
MAX_KEY_SIZE_BITS = 8 << _SIZE_BITS  # 32768
_MAX_OFFSET_BYTES = (1 << _OFFSET_BITS) - 1


def _block_tag(block_id: str) -> int:
    return int.from_bytes(hashlib.sha256(uuid.UUID(block_id).bytes).digest()[:8], "big") >> (64 - _BLOCK_TAG_BITS)


def _pair_tag(master_sae_id: str, slave_sae_id: str) -> int:
    h = hashlib.sha256(master_sae_id.encode() + b"\0" + slave_sae_id.encode()).digest()
    return int.from_bytes(h[:4], "big") >> (32 - _PAIR_BITS)


@dataclass(frozen=True)
class KeyIdFields:
    block_tag: int
    offset_bits: int
    size_bits: int
    pair_tag: int


def key_id_for(block_id: str, offset_bits: int, size_bits: int, master_sae_id: str, slave_sae_id: str) -> str:
    """Deterministic RFC 9562 v8 UUID naming the key at ``[offset_bits, +size_bits)`` of ``block_id``."""
    if offset_bits % 8 or size_bits % 8 or size_bits <= 0:
        raise ValueError(f"key slice must be byte aligned, got offset {offset_bits}, size {size_bits} bits")
    if size_bits > MAX_KEY_SIZE_BITS:
        raise ValueError(f"size_bits must be <= {MAX_KEY_SIZE_BITS}, got {size_bits}")
    if offset_bits // 8 > _MAX_OFFSET_BYTES:
        raise ValueError(f"offset_bits {offset_bits} beyond the 4 GiB block limit of the key-ID layout")
    p = _block_tag(block_id)
    p = (p << _OFFSET_BITS) | (offset_bits // 8)
    p = (p << _SIZE_BITS) | (size_bits // 8 - 1)
    p = (p << _PAIR_BITS) | _pair_tag(master_sae_id, slave_sae_id)
    # spread the 122 payload bits around the version (4) and variant (2) fields
    value = ((p >> 74) << 80) | (8 << 76) | (((p >> 62) & 0xFFF) << 64) | (0b10 << 62) | (p & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def parse_key_id(key_id: str) -> KeyIdFields:
    """Inverse of :func:`key_id_for`; raises ValueError for anything that is not such a UUID."""
    try:
        u = uuid.UUID(str(key_id))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"key_ID {key_id!r} is not a UUID") from None
    v = u.int
    if (v >> 76) & 0xF != 8 or (v >> 62) & 0b11 != 0b10:
        raise ValueError(f"key_ID {key_id} was not issued by a qkdflow KME")
    p = ((v >> 80) << 74) | (((v >> 64) & 0xFFF) << 62) | (v & ((1 << 62) - 1))
    pair = p & ((1 << _PAIR_BITS) - 1)
    p >>= _PAIR_BITS
    size_bits = 8 * ((p & ((1 << _SIZE_BITS) - 1)) + 1)
    p >>= _SIZE_BITS
    offset_bits = 8 * (p & ((1 << _OFFSET_BITS) - 1))
    return KeyIdFields(p >> _OFFSET_BITS, offset_bits, size_bits, pair)


class BlockResolver:
    """Block tag -> block id over a store's committed blocks (rebuilt when a tag or block is new)."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._tags: dict[int, list[str]] = {}
        self._known: set[str] = set()

    def _refresh(self) -> None:
        tags: dict[int, list[str]] = {}
        ids = self.store.committed_ids()
        for b in ids:
            tags.setdefault(_block_tag(b), []).append(b)
        self._tags, self._known = tags, set(ids)

    def block_for(self, tag: int) -> str | None:
        """The committed block with this tag, None if none; KeyStoreError if two blocks share it."""
        with self._lock:
            if tag not in self._tags:
                self._refresh()
            hits = self._tags.get(tag, [])
        if len(hits) > 1:
            raise KeyStoreError(f"block tag {tag:014x} is ambiguous ({len(hits)} blocks)")
        return hits[0] if hits else None

    def check_unique(self, block_id: str) -> None:
        """Refuse to name keys from a block whose tag another committed block shares."""
        with self._lock:
            if block_id not in self._known:
                self._refresh()
            n = len(self._tags.get(_block_tag(block_id), []))
        if n > 1:
            raise KeyStoreError(f"block {block_id}: its key-ID tag collides with another block")


def take_keys_with_ids(store: KeyStore, resolver: BlockResolver, number: int, size_bits: int,
                       master_sae_id: str, slave_sae_id: str) -> list[tuple[str, bytes]]:
    """Master end: cut ``number`` keys (delivered once, atomically) and name them by deterministic key IDs."""
    if size_bits > MAX_KEY_SIZE_BITS:
        raise ValueError(f"size must be <= {MAX_KEY_SIZE_BITS} bits, got {size_bits}")
    keys = store.take_keys(number, size_bits)
    for bid in {k.block_id for k in keys}:
        resolver.check_unique(bid)
    return [(key_id_for(k.block_id, k.offset_bits, k.size_bits, master_sae_id, slave_sae_id), k.key) for k in keys]


class UnknownKeyId(ValueError):
    """A key_ID that names no key this end can deliver."""


def fetch_keys_by_ids(store: KeyStore, resolver: BlockResolver, key_ids: Iterable[str],
                      master_sae_id: str, slave_sae_id: str) -> list[tuple[str, bytes]]:
    """Slave end: deliver the keys with these IDs once, all or nothing, in the order asked.

    Raises ``UnknownKeyId`` (a ValueError) for an id that is malformed, for another SAE pair, names no
    committed block, repeats, or whose bits were already delivered or passed over here; ``KeyNotConfirmed``
    (nothing delivered, retry later) if its block is committed here but not yet confirmed.
    """
    ids = list(key_ids)
    want_pair = _pair_tag(master_sae_id, slave_sae_id)
    descs: list[KeyDescriptor] = []
    seen: set[str] = set()
    for kid in ids:
        try:
            f = parse_key_id(kid)
        except ValueError as e:
            raise UnknownKeyId(str(e)) from None
        canon = str(uuid.UUID(str(kid)))
        if canon in seen:
            raise UnknownKeyId(f"key_ID {canon} repeated in the request")
        seen.add(canon)
        if f.pair_tag != want_pair:
            raise UnknownKeyId(f"key_ID {canon} is unknown for master SAE {master_sae_id!r}, slave SAE"
                               f" {slave_sae_id!r}")
        bid = resolver.block_for(f.block_tag)
        if bid is None:
            raise UnknownKeyId(f"key_ID {canon} is unknown (no such key block here)")
        descs.append(KeyDescriptor(canon, bid, f.offset_bits, f.size_bits))
    try:
        store.accept_peer_keys(descs)
    except KeyNotConfirmed:
        raise
    except KeyNotFound as e:
        raise UnknownKeyId(str(e)) from None
    except (AlreadyDelivered, KeyStoreError) as e:
        raise UnknownKeyId(f"key already delivered or passed over: {e}") from None
    except ValueError as e:
        raise UnknownKeyId(str(e)) from None
    got = store.get_by_ids([d.key_id for d in descs])
    return [(d.key_id, d.key) for d in got]


# ---- one KeyStore connection per path and process, shared by the blocks that deliver from it -------------
_STORES: dict[str, list] = {}
_STORES_LOCK = threading.Lock()


def shared_store(path: str) -> KeyStore:
    """The process-wide reader KeyStore for ``path`` (opened on first use, reference counted)."""
    key = path if path == ":memory:" else os.path.realpath(path)
    with _STORES_LOCK:
        ent = _STORES.get(key)
        if ent is None or path == ":memory:":
            ent = [KeyStore(path), 0]
            if path != ":memory:":
                _STORES[key] = ent
        ent[1] += 1
        return ent[0]


def release_store(store: KeyStore) -> None:
    """Drop one reference from :func:`shared_store`; the last one closes the store."""
    with _STORES_LOCK:
        for key, ent in list(_STORES.items()):
            if ent[0] is store:
                ent[1] -= 1
                if ent[1] == 0:
                    del _STORES[key]
                    store.close()
                return
    store.close()


# ---- the API, transport independent ----------------------------------------------------------------
class ApiError(Exception):
    """An ETSI 014 error response: HTTP status, message, optional details."""

    def __init__(self, status: int, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details

    def body(self) -> dict:
        out: dict = {"message": self.message}
        if self.details:
            out["details"] = self.details
        return out


def _int_field(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, got {value!r}")
    return value


class KeyManager:
    """The ETSI GS QKD 014 logic of one KME over one key store (one link, one role)."""

    def __init__(self, store: KeyStore, *, kme_id: str, peer_kme_id: str, role: str,
                 local_sae_ids: Iterable[str], peer_sae_ids: Iterable[str], key_size_bits: int = 256,
                 min_key_size_bits: int = 64, max_key_size_bits: int = 4096, max_key_per_request: int = 128,
                 max_key_count: int = 1_000_000) -> None:
        if role not in ("master", "slave"):
            raise ValueError(f"role must be 'master' or 'slave', got {role!r}")
        self.local, self.peer = frozenset(local_sae_ids), frozenset(peer_sae_ids)
        if not self.local:
            raise ValueError("sae_id: at least one local SAE id is required")
        if not self.peer:
            raise ValueError("peer_sae_id: at least one peer SAE id is required")
        for name, v in (("key_size_bits", key_size_bits), ("min_key_size_bits", min_key_size_bits),
                        ("max_key_size_bits", max_key_size_bits)):
            if v <= 0 or v % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {v}")
        if not min_key_size_bits <= key_size_bits <= max_key_size_bits <= MAX_KEY_SIZE_BITS:
            raise ValueError(f"key sizes must satisfy min <= default <= max <= {MAX_KEY_SIZE_BITS} bits, got "
                             f"{min_key_size_bits}, {key_size_bits}, {max_key_size_bits}")
        if max_key_per_request < 1:
            raise ValueError(f"max_key_per_request must be >= 1, got {max_key_per_request}")
        self.store, self.resolver = store, BlockResolver(store)
        self.kme_id, self.peer_kme_id, self.role = kme_id, peer_kme_id, role
        self.key_size, self.min_size, self.max_size = key_size_bits, min_key_size_bits, max_key_size_bits
        self.max_per_request, self.max_key_count = max_key_per_request, max_key_count
        self.counters: dict[str, int] = {}
        self._clock = threading.Lock()

    def count(self, name: str, n: int = 1) -> None:
        with self._clock:
            self.counters[name] = self.counters.get(name, 0) + n

    # -- checks --
    def _caller(self, sae_id: str | None) -> str:
        if sae_id is None:
            raise ApiError(401, "client certificate required: the SAE is identified by its TLS certificate")
        if sae_id not in self.local:
            raise ApiError(401, f"SAE {sae_id!r} is not registered at KME {self.kme_id!r}")
        return sae_id

    def _peer(self, sae_id: str, role: str) -> str:
        if sae_id not in self.peer:
            raise ApiError(401, f"{role} SAE {sae_id!r} is not reachable from KME {self.kme_id!r}")
        return sae_id

    def _size(self, size: object) -> int:
        s = _int_field(size, "size")
        if s % 8:
            raise ApiError(400, f"size must be a multiple of 8 bits, got {s}")
        if not self.min_size <= s <= self.max_size:
            raise ApiError(400, f"size must be in [{self.min_size}, {self.max_size}] bits, got {s}")
        return s

    def _number(self, number: object) -> int:
        n = _int_field(number, "number")
        if not 1 <= n <= self.max_per_request:
            raise ApiError(400, f"number must be in [1, {self.max_per_request}], got {n}")
        return n

    # -- calls --
    def status(self, caller: str | None, slave_sae_id: str) -> dict:
        master = self._caller(caller)
        slave = self._peer(slave_sae_id, "slave")
        return {
            "source_KME_ID": self.kme_id, "target_KME_ID": self.peer_kme_id,
            "master_SAE_ID": master, "slave_SAE_ID": slave,
            "key_size": self.key_size, "stored_key_count": self.store.available_keys(self.key_size),
            "max_key_count": self.max_key_count, "max_key_per_request": self.max_per_request,
            "max_key_size": self.max_size, "min_key_size": self.min_size, "max_SAE_ID_count": 0,
        }

    def enc_keys(self, caller: str | None, slave_sae_id: str, request: dict) -> dict:
        master = self._caller(caller)
        slave = self._peer(slave_sae_id, "slave")
        allowed = {"number", "size", "additional_slave_SAE_IDs", "extension_mandatory", "extension_optional"}
        unknown = sorted(set(request) - allowed)
        if unknown:
            raise ApiError(400, f"unknown request field(s): {', '.join(unknown)}")
        number = self._number(request.get("number", 1))
        size = self._size(request.get("size", self.key_size))
        extra = request.get("additional_slave_SAE_IDs", [])
        if not isinstance(extra, list) or not all(isinstance(x, str) for x in extra):
            raise ApiError(400, "additional_slave_SAE_IDs must be a list of strings")
        if extra:
            raise ApiError(400, "additional_slave_SAE_IDs: key multicast is not supported (max_SAE_ID_count is 0)")
        for name in ("extension_mandatory", "extension_optional"):
            ext = request.get(name, [])
            if not isinstance(ext, list) or not all(isinstance(x, dict) for x in ext):
                raise ApiError(400, f"{name} must be a list of objects")
        mand = request.get("extension_mandatory", [])
        if mand:
            names = sorted({k for x in mand for k in x})
            raise ApiError(400, f"extension_mandatory: unsupported extension(s): {', '.join(names)}",
                           [{"extension_mandatory_unsupported": x} for x in mand])
        if self.role != "master":
            raise ApiError(400, f"KME {self.kme_id!r} is the slave end of this link: request enc_keys at KME"
                                f" {self.peer_kme_id!r}")
        try:
            keys = take_keys_with_ids(self.store, self.resolver, number, size, master, slave)
        except InsufficientKey as e:
            self.count("exhausted")
            raise ApiError(503, f"not enough key material: {e}") from None
        except KeyStoreError as e:
            raise ApiError(503, f"key store error: {e}") from None
        self.count("keys_delivered", len(keys))
        self.count("bits_delivered", len(keys) * size)
        return {"keys": [{"key_ID": k, "key": base64.b64encode(b).decode()} for k, b in keys]}

    def dec_keys(self, caller: str | None, master_sae_id: str, request: dict) -> dict:
        slave = self._caller(caller)
        master = self._peer(master_sae_id, "master")
        unknown = sorted(set(request) - {"key_IDs", "key_IDs_extension"})
        if unknown:
            raise ApiError(400, f"unknown request field(s): {', '.join(unknown)}")
        entries = request.get("key_IDs")
        if not isinstance(entries, list) or not entries:
            raise ApiError(400, "key_IDs must be a non-empty list of {\"key_ID\": UUID} objects")
        if len(entries) > self.max_per_request:
            raise ApiError(400, f"key_IDs: at most {self.max_per_request} keys per request, got {len(entries)}")
        ids = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("key_ID"), str) or set(e) - {"key_ID",
                                                                                              "key_ID_extension"}:
                raise ApiError(400, f"key_IDs[{i}] must be an object {{\"key_ID\": UUID, opt. key_ID_extension}}")
            ids.append(e["key_ID"])
        if self.role != "slave":
            raise ApiError(400, f"KME {self.kme_id!r} is the master end of this link: request dec_keys at KME"
                                f" {self.peer_kme_id!r}")
        try:
            keys = fetch_keys_by_ids(self.store, self.resolver, ids, master, slave)
        except UnknownKeyId as e:
            raise ApiError(400, str(e), [{"key_IDs": ids}]) from None
        except KeyNotConfirmed as e:
            self.count("not_yet_confirmed")
            raise ApiError(503, f"key not yet available at KME {self.kme_id!r}, retry shortly: {e}") from None
        except KeyStoreError as e:
            raise ApiError(503, f"key store error: {e}") from None
        self.count("keys_delivered", len(keys))
        self.count("bits_delivered", sum(8 * len(b) for _, b in keys))
        return {"keys": [{"key_ID": k, "key": base64.b64encode(b).decode()} for k, b in keys]}


# ---- HTTP over TLS ---------------------------------------------------------------------------------------
_ROUTE = re.compile(r"^/api/v1/keys/([^/]+)/(status|enc_keys|dec_keys)$")
MAX_BODY_BYTES = 1 << 20


def _query(qs: str, allowed: set[str]) -> dict[str, str]:
    q = parse_qs(qs, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(q) - allowed)
    if unknown:
        raise ApiError(400, f"unknown query parameter(s): {', '.join(unknown)}")
    for k, v in q.items():
        if len(v) != 1:
            raise ApiError(400, f"query parameter {k} given {len(v)} times")
    return {k: v[0] for k, v in q.items()}


def _qint(q: dict[str, str], name: str, default: int) -> int:
    if name not in q:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", q[name]):
        raise ApiError(400, f"{name} must be a non-negative integer, got {q[name]!r}")
    return int(q[name])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "qkdflow-kme/1"
    disable_nagle_algorithm = True
    timeout = 30  # idle keep-alive connections are closed after this

    server: "KmeServer"

    def setup(self) -> None:
        sock = self.request
        sock.settimeout(self.server.handshake_timeout_s)
        try:
            self.request = self.server.ssl_context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.server.manager.count("tls_handshake_failed")
            self.server.log(f"TLS handshake with {self.client_address[0]} failed: {e}")
            sock.close()
            raise _Dropped() from None
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, socket.timeout):
            self.close_connection = True

    def _sae(self) -> str | None:
        cert = self.connection.getpeercert()
        if not cert:
            return None
        cn = None
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    cn = v
        if cn is None:
            return None
        return self.server.sae_map.get(cn, cn)

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.server.manager.count(f"http_{status}")

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise ApiError(400, "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            self.close_connection = True
            raise ApiError(400, f"bad Content-Length {length!r}")
        n = int(length)
        if n > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(400, f"request body of {n} bytes exceeds {MAX_BODY_BYTES}")
        raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"malformed JSON body: {e}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "request body must be a JSON object")
        return doc

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body() if method == "POST" else None
            if method == "GET" and self.headers.get("Content-Length", "0") not in ("", "0"):
                self._body()  # drain so the connection stays in sync
            parts = urlsplit(self.path)
            m = _ROUTE.match(parts.path)
            if m is None:
                raise ApiError(404, f"no such resource {parts.path!r}")
            sae_path, call = unquote(m.group(1)), m.group(2)
            caller = self._sae()
            mgr = self.server.manager
            if call == "status":
                if method != "GET":
                    raise ApiError(405, "status supports GET only")
                _query(parts.query, set())
                out = mgr.status(caller, sae_path)
            elif call == "enc_keys":
                if method == "GET":
                    q = _query(parts.query, {"number", "size"})
                    req: dict = {}
                    if "number" in q:
                        req["number"] = _qint(q, "number", 1)
                    if "size" in q:
                        req["size"] = _qint(q, "size", mgr.key_size)
                else:
                    _query(parts.query, set())
                    req = body
                out = mgr.enc_keys(caller, sae_path, req)
            else:
                if method == "GET":
                    q = _query(parts.query, {"key_ID"})
                    if "key_ID" not in q:
                        raise ApiError(400, "dec_keys GET needs the key_ID query parameter")
                    req = {"key_IDs": [{"key_ID": q["key_ID"]}]}
                else:
                    _query(parts.query, set())
                    req = body
                out = mgr.dec_keys(caller, sae_path, req)
        except ApiError as e:
            self._reply(e.status, e.body())
            return
        except Exception as e:  # noqa: BLE001 - the server keeps serving; the client gets a JSON 503
            self.server.log(f"internal error on {method} {self.path}: {type(e).__name__}: {e}")
            self._reply(503, {"message": f"internal server error: {type(e).__name__}"})
            return
        self._reply(200, out)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if self.server.verbose:
            self.server.log(f"{self.client_address[0]} " + format % args)


class _Dropped(Exception):
    """The connection was closed during setup (failed TLS handshake)."""


class KmeServer(ThreadingHTTPServer):
    """ThreadingHTTPServer serving one :class:`KeyManager` over TLS with optional client certificates."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], manager: KeyManager, ssl_context: ssl.SSLContext, *,
                 sae_map: dict[str, str] | None = None, verbose: bool = False,
                 handshake_timeout_s: float = 10.0) -> None:
        self.manager, self.ssl_context = manager, ssl_context
        self.sae_map = dict(sae_map or {})
        self.verbose, self.handshake_timeout_s = verbose, handshake_timeout_s
        super().__init__(address, _Handler)

    def log(self, text: str) -> None:
        print(f"[kms:{self.manager.kme_id}] {text}", file=sys.stderr, flush=True)

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (_Dropped, ConnectionError, ssl.SSLError, socket.timeout)):
            return
        super().handle_error(request, client_address)


def server_ssl_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS >= 1.2 server context that asks for (but does not require) a client certificate from ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for field, path in (("cert", cert), ("key", key), ("ca", ca)):
        if not os.path.isfile(path):
            raise ValueError(f"{field}: no such file {path!r}")
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
    except ssl.SSLError as e:
        raise ValueError(f"cert/key/ca: cannot load TLS material: {e}") from None
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def make_server(manager: KeyManager, *, host: str = "127.0.0.1", port: int = 0, cert: str, key: str, ca: str,
                sae_map: dict[str, str] | None = None, verbose: bool = False) -> KmeServer:
    """A ready (bound, not yet serving) KME server; ``server.server_address[1]`` is the port."""
    return KmeServer((host, port), manager, server_ssl_context(cert, key, ca), sae_map=sae_map, verbose=verbose)


# ---- command line ---------------------------------------------------------------------------------------
def _cert_cn(path: str) -> str | None:
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        with open(path, "rb") as f:
            c = x509.load_pem_x509_certificate(f.read())
        attrs = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else None
    except Exception:  # noqa: BLE001 - only a default for --kme-id
        return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True,
                   help="this side's key store (sqlite file filled by distillation, also while it runs)")
    p.add_argument("--role", choices=("master", "slave"), required=True,
                   help="master: serves enc_keys (this side allocates); slave: serves dec_keys")
    p.add_argument("--sae-id", action="append", required=True, metavar="ID", help="SAE attached to this KME; repeatable")
    p.add_argument("--peer-sae-id", action="append", required=True, metavar="ID",
                   help="SAE attached to the peer KME; repeatable")
    p.add_argument("--kme-id", help="this KME's id (default: CN of --cert)")
    p.add_argument("--peer-kme", required=True, metavar="ID", help="the peer KME's id (target_KME_ID)")
    p.add_argument("--cert", required=True, help="server certificate (PEM)")
    p.add_argument("--key", required=True, help="server private key (PEM)")
    p.add_argument("--ca", required=True, help="CA certificate(s) that sign SAE client certificates (PEM)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="listen port (default 8443)")
    p.add_argument("--sae-map", action="append", default=[], metavar="CN=SAE_ID",
                   help="map a client-certificate CN to an SAE id; repeatable (default: SAE id = CN)")
    p.add_argument("--key-size", type=int, default=256, help="default key size in bits (default 256)")
    p.add_argument("--min-key-size", type=int, default=64, help="min key size in bits (default 64)")
    p.add_argument("--max-key-size", type=int, default=4096, help="max key size in bits (default 4096)")
    p.add_argument("--max-keys-per-request", type=int, default=128, help="default 128")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")


def main(args: argparse.Namespace) -> int:
    """Serve ETSI GS QKD 014 key delivery from a key store over mutual TLS."""
    sae_map = {}
    for item in args.sae_map:
        cn, eq, sae = item.partition("=")
        if not eq or not cn or not sae:
            raise ValueError(f"--sae-map {item!r}: expected CN=SAE_ID")
        sae_map[cn] = sae
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.store != ":memory:" and not os.path.isfile(args.store):
        raise ValueError(f"--store: no such key store {args.store!r}")
    kme_id = args.kme_id or _cert_cn(args.cert) or "kme"
    try:
        store = KeyStore(args.store, owner=False)  # a reader: the running flowgraph's key-store block owns it
    except KeyStoreError as e:
        raise ValueError(f"--store: {e}") from None
    try:
        mgr = KeyManager(store, kme_id=kme_id, peer_kme_id=args.peer_kme, role=args.role,
                         local_sae_ids=args.sae_id, peer_sae_ids=args.peer_sae_id, key_size_bits=args.key_size,
                         min_key_size_bits=args.min_key_size, max_key_size_bits=args.max_key_size,
                         max_key_per_request=args.max_keys_per_request)
        server = make_server(mgr, host=args.host, port=args.port, cert=args.cert, key=args.key, ca=args.ca,
                             sae_map=sae_map, verbose=args.verbose)
    except Exception:
        store.close()
        raise
    host, port = server.server_address[:2]
    server.log(f"{args.role} KME serving ETSI GS QKD 014 on https://{host}:{port}/api/v1/keys/ "
               f"(store {args.store}, {store.available_keys(mgr.key_size)} keys of {mgr.key_size} bits)")
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
        server.log(f"stopped; counters {json.dumps(mgr.counters, sort_keys=True)}")
    return 0
