"""Fronthaul decrypt: verify and decrypt AES-256-GCM packets; a packet that fails is counted, never passed on.

Reads the packet format of ``fronthaul_encrypt``.  The key named by a packet's key ID is fetched once from this
side's key store (``qkdflow.kms.fetch_keys_by_ids``: same block, offset and size as the encryptor's, marked
delivered here) and cached with the last few keys, so the switch happens at exactly the packet the encryptor
switched at.  Rejected and counted, in this order: unknown header version (``rejected_malformed``), a key ID
this store cannot deliver (``rejected_unknown_key``; e.g. a forged ID, or a block the local distillation has
not committed yet), a packet number not above the highest accepted one (``rejected_replay``, as MACsec with a
zero replay window), and a failed GCM tag check (``rejected_auth``: any change to metadata, header, ciphertext
or tag).  Keys come only from confirmed blocks (committed at both ends): the AAU confirms a block at its commit,
the DU one message later, so a key ID naming a block committed but not yet confirmed here holds the stream,
polling every ``key_poll_s`` for up to ``confirm_wait_s``; if the block is still unconfirmed (the AAU stopped
between its commit and its "done"; the next start-up reconciliation settles it) the packets are counted in
``rejected_unconfirmed_key`` and later frames retry without waiting.  A forged key ID can make this end fetch
(and so burn) keys early, or hold the stream for ``confirm_wait_s`` once per forged ID naming an unconfirmed
block — a denial of service no worse than dropping or delaying packets, which an on-path attacker can always do.
"""
from __future__ import annotations

import time
import uuid
from collections import OrderedDict

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blocks.fronthaul_encrypt import (
    packet_rows,
    AAD_BYTES,
    FLAG_REUSED_KEY,
    KEYID_AT,
    META_BYTES,
    NONCE_AT,
    VERSION,
    encrypted_packet_bytes,
)
from blocks.fronthaul_source import plain_dtype
from qkdflow.distill.keystore import KeyNotConfirmed
from qkdflow.kms import BlockResolver, UnknownKeyId, fetch_keys_by_ids, release_store, shared_store
from qkdflow.runtime.block import Block, BlockError, Stream
from qkdflow.runtime.params import Param

KEY_CACHE = 4


class FronthaulDecrypt(Block):
    """Verify and decrypt AES-256-GCM fronthaul packets with keys from the key store; count failures."""

    category = "fronthaul"
    params = (
        Param("store_path", str, doc="this side's (slave) key store file"),
        Param("sae_id", str, "fronthaul-du", doc="SAE id of this decryptor (slave SAE in the key IDs)"),
        Param("peer_sae_id", str, "fronthaul-aau", doc="SAE id of the encryptor (master SAE)"),
        Param("confirm_wait_s", float, 5.0, unit="s", low=0.0,
              doc="hold the stream this long for a key whose block is committed but not yet confirmed here"),
        Param("key_poll_s", float, 0.005, unit="s", low=0.0, low_open=True,
              doc="store polling period while waiting for a confirmation"),
    )
    inputs = (Stream("in", None, doc="encrypted packets (fronthaul_encrypt)"),)
    outputs = (Stream("out", None, doc="authentic plaintext packets {slot, seq, t_ns, data[packet_bytes]}"),)

    def start(self) -> None:
        self.store = shared_store(self.store_path)
        self.resolver = BlockResolver(self.store)
        self.keys: OrderedDict[bytes, AESGCM | None] = OrderedDict()  # None: known to be undeliverable
        self.last_pn = 0
        self.switch_seqs: list[tuple[int, str]] = []
        self.current = b""
        self._unconfirmed: set[bytes] = set()  # key ids whose block stayed unconfirmed past confirm_wait_s
        self._dtypes: dict[np.dtype, np.dtype] = {}
        for c in ("packets_in", "packets_ok", "rejected_malformed", "rejected_unknown_key", "rejected_replay",
                  "rejected_auth", "rejected_unconfirmed_key", "keys_fetched", "key_bits_consumed",
                  "packets_reused_key_flag", "confirm_waits"):
            self.counters.setdefault(c, 0)

    def stop(self) -> None:
        release_store(self.store)

    def _key(self, kid: bytes) -> AESGCM | None:
        if kid in self.keys:
            self.keys.move_to_end(kid)
            return self.keys[kid]
        ident = str(uuid.UUID(bytes=kid))
        try:
            key = self._fetch(kid, ident)
            self._unconfirmed.discard(kid)
            aes: AESGCM | None = AESGCM(key) if len(key) == 32 else None
            if aes is None:
                self.log(f"key {ident} is {8 * len(key)} bits, not 256: packets rejected")
            else:
                self.count("keys_fetched")
                self.count("key_bits_consumed", 8 * len(key))
        except UnknownKeyId as e:
            self.log(f"packets under key {ident} rejected: {e}")
            aes = None
        except KeyNotConfirmed as e:  # not cached: a later frame retries once the block is confirmed
            if kid not in self._unconfirmed:
                self.log(f"packets under key {ident} rejected for now: {e} after {self.confirm_wait_s:g} s")
            self._unconfirmed.add(kid)
            return None
        self.keys[kid] = aes
        while len(self.keys) > KEY_CACHE:
            self.keys.popitem(last=False)
        return aes

    def _fetch(self, kid: bytes, ident: str) -> bytes:
        """The key named ``ident``, waiting up to ``confirm_wait_s`` (once per key id) for its block's confirmation."""
        deadline = None
        while True:
            try:
                ((_, key),) = fetch_keys_by_ids(self.store, self.resolver, [ident], self.peer_sae_id, self.sae_id)
                return key
            except KeyNotConfirmed:
                now = time.monotonic()
                if deadline is None:
                    if kid in self._unconfirmed:
                        raise
                    deadline = now + self.confirm_wait_s
                    self.count("confirm_waits")
                if now >= deadline:
                    raise
                time.sleep(self.key_poll_s)

    def work(self, ins):
        f = ins["in"]
        src = f.data
        out, in_u8, out_u8 = packet_rows(src, self._dtypes, lambda d: plain_dtype(encrypted_packet_bytes(d)))
        if in_u8 is None:
            return {"out": f.with_data(out)}
        n, rin, rout = len(out), in_u8.shape[1], out_u8.shape[1]
        src_mv = memoryview(in_u8.reshape(-1))
        out_mv = memoryview(out_u8.reshape(-1))
        bad: list[int] = []
        cur, aes, reused = None, None, 0
        c = self.counters
        for j in range(n):  # per packet: header checks are byte reads, the AEAD call does the work
            s = j * rin
            if src_mv[s + META_BYTES] != VERSION:
                c["rejected_malformed"] += 1
                bad.append(j)
                continue
            kid = src_mv[s + KEYID_AT:s + KEYID_AT + 16].tobytes()
            if kid != cur:
                cur, aes = kid, self._key(kid)
            if aes is None:
                c["rejected_unconfirmed_key" if kid in self._unconfirmed else "rejected_unknown_key"] += 1
                bad.append(j)
                continue
            pn = int.from_bytes(src_mv[s + NONCE_AT + 4:s + NONCE_AT + 12], "big")
            if pn <= self.last_pn:
                c["rejected_replay"] += 1
                bad.append(j)
                continue
            o = j * rout
            try:
                aes.decrypt_into(src_mv[s + NONCE_AT:s + NONCE_AT + 12], src_mv[s + AAD_BYTES:s + rin],
                                 src_mv[s:s + AAD_BYTES], out_mv[o + META_BYTES:o + rout])
            except InvalidTag:
                c["rejected_auth"] += 1
                bad.append(j)
                continue
            self.last_pn = pn
            if src_mv[s + META_BYTES + 1] & FLAG_REUSED_KEY:
                reused += 1
            if kid != self.current:
                self.current = kid
                self.switch_seqs.append((int(src["seq"][j]), str(uuid.UUID(bytes=kid))))
        c["packets_in"] += n
        c["packets_ok"] += n - len(bad)
        c["packets_reused_key_flag"] += reused
        if bad:
            out = np.delete(out, bad)
        return {"out": f.with_data(out)}

    def report(self) -> dict:
        return {"key_switches": [[s, k] for s, k in self.switch_seqs]}
