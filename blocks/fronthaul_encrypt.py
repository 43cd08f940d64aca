"""Fronthaul encrypt: AES-256-GCM per packet with keys from the QKD key store, rekeyed by packets or time.

Packet format (items of dtype :func:`encrypted_dtype`), modelled on MACsec GCM-AES-XPN-256 (IEEE 802.1AE;
shared/reference/physics.md Sec. 5) with a QKD key id in place of the association number:

* ``slot``, ``seq``, ``t_ns`` as in the plaintext stream (24 bytes), then a 32-byte security header ``hdr``:
  ``[0]`` version 1, ``[1]`` flags (bit 0: sent on a reused key after the store ran dry), ``[2:4]`` zero,
  ``[4:16]`` the 96-bit GCM nonce = 4 zero bytes + 64-bit packet number PN (big endian), ``[16:32]`` the
  ETSI-014-style key ID (UUID bytes, :func:`qkdflow.kms.key_id_for`).
* the first 56 bytes (metadata + header) are the GCM additional authenticated data; ``ct`` holds the
  ciphertext of the ``packet_bytes`` packet bytes followed by the 16-byte tag (NIST SP 800-38D).

Nonces: PN starts at 1 and increases by one per packet for the life of the block, so no (key, nonce) pair
repeats (SP 800-38D Sec. 8.2.1 deterministic construction) even when a key is reused under
``reuse_last_and_alarm``; every key is cut from the store once (``take_keys``, one transaction, also against a
``qkdflow kms`` serving the same store), so a restart never reuses one.  Keys come only from confirmed blocks
(committed at both ends, ``qkdflow.distill.keystore``).
Rekeying: a new 256-bit key after ``rekey_packets`` packets or once a packet's slot is ``rekey_interval_s``
(link clock ``rate_hz``) past the key's first packet, whichever comes first (0 disables either rule).  The key
id rides in every header, so the decryptor switches at exactly the packet the encryptor did.
Key exhaustion: ``hold`` waits (backpressure upstream, nothing dropped) polling the store every
``key_poll_s`` until a key arrives or ``hold_timeout_s`` passes (then the run fails);
``reuse_last_and_alarm`` keeps the last key, sets the alarm flag in each such packet, counts and logs,
and retries the store at every frame and rekey point (with no key yet at all it holds).
One ``AESGCM.encrypt_into`` call per packet (cryptography / OpenSSL, AES-NI); headers, nonces and the output
array are built vectorised per frame.
"""
from __future__ import annotations

import time
import uuid

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blocks.fronthaul_source import packet_bytes_of
from qkdflow.distill.keystore import InsufficientKey
from qkdflow.kms import BlockResolver, release_store, shared_store, take_keys_with_ids
from qkdflow.runtime.block import Block, BlockError, Stream
from qkdflow.runtime.params import Param

HDR_BYTES = 32
TAG_BYTES = 16
META_BYTES = 24
AAD_BYTES = META_BYTES + HDR_BYTES
NONCE_AT = META_BYTES + 4  # nonce = hdr[4:16]
KEYID_AT = META_BYTES + 16
VERSION = 1
FLAG_REUSED_KEY = 0x01
KEY_BITS = 256


def encrypted_dtype(packet_bytes: int) -> np.dtype:
    """Packet items of an encrypted fronthaul stream (56 bytes AAD + ciphertext + 16-byte tag)."""
    return np.dtype([("slot", "<u8"), ("seq", "<u8"), ("t_ns", "<i8"), ("hdr", "u1", (HDR_BYTES,)),
                     ("ct", "u1", (packet_bytes + TAG_BYTES,))])


def packet_rows(src: np.ndarray, cache: dict, out_dtype_of) -> tuple:
    """Byte rows of a packet frame and of its output (encrypted or plain), with the packet metadata copied once.

    ``out_dtype_of(src.dtype)`` gives the output dtype (cached per input dtype; ValueError -> BlockError).
    Returns ``(out, in_u8, out_u8)``; ``in_u8``/``out_u8`` are None for an empty frame."""
    dt = cache.get(src.dtype)
    if dt is None:  # first frame of this packet size: check and cache the output dtype
        try:
            dt = cache[src.dtype] = out_dtype_of(src.dtype)
        except ValueError as e:
            raise BlockError(str(e)) from None
    if not src.flags.c_contiguous:
        src = np.ascontiguousarray(src)
    n = len(src)
    out = np.empty(n, dt)
    if n == 0:
        return out, None, None
    in_u8 = src.view(np.uint8).reshape(n, src.dtype.itemsize)
    out_u8 = out.view(np.uint8).reshape(n, dt.itemsize)
    out_u8[:, :META_BYTES] = in_u8[:, :META_BYTES]  # slot, seq, t_ns: one copy, not three field copies
    return out, in_u8, out_u8


def encrypted_packet_bytes(dtype: np.dtype) -> int:
    """``packet_bytes`` of an encrypted fronthaul dtype; ValueError for any other dtype."""
    if dtype.names != ("slot", "seq", "t_ns", "hdr", "ct") or dtype.fields["hdr"][0].shape != (HDR_BYTES,):
        raise ValueError(f"not an encrypted fronthaul stream (dtype {dtype})")
    return int(dtype.fields["ct"][0].shape[0]) - TAG_BYTES


class FronthaulEncrypt(Block):
    """AES-256-GCM per packet, keys from the QKD key store, rekeying by packet count or time."""

    category = "fronthaul"
    params = (
        Param("store_path", str, doc="this side's (master) key store file"),
        Param("sae_id", str, "fronthaul-aau", doc="SAE id of this encryptor (master SAE in the key IDs)"),
        Param("peer_sae_id", str, "fronthaul-du", doc="SAE id of the decryptor (slave SAE)"),
        Param("rekey_packets", int, 1_000_000, unit="packets", doc="new key after this many packets (0: off)",
              low=0),
        Param("rekey_interval_s", float, 1.0, unit="s", doc="new key after this much link time (0: off)", low=0.0),
        Param("rate_hz", float, 1.0e9, unit="Hz", doc="link clock to read packet slots as time", low=0.0,
              low_open=True),
        Param("on_key_exhaustion", str, "hold", doc="store ran dry: hold traffic, or reuse the last key and alarm",
              choices=("hold", "reuse_last_and_alarm")),
        Param("hold_timeout_s", float, 30.0, unit="s", doc="fail the run after holding this long", low=0.0,
              low_open=True),
        Param("key_poll_s", float, 0.01, unit="s", doc="store polling period while holding", low=0.0,
              low_open=True),
    )
    inputs = (Stream("in", None, doc="plaintext fronthaul packets (fronthaul_source)"),)
    outputs = (Stream("out", None, doc="encrypted packets {slot, seq, t_ns, hdr[32], ct[packet_bytes+16]}"),)

    def validate(self) -> list[str]:
        if self.sae_id == self.peer_sae_id:
            return ["peer_sae_id: must differ from sae_id"]
        return []

    def start(self) -> None:
        self.store = shared_store(self.store_path)
        self.resolver = BlockResolver(self.store)
        self.pn = 1  # next packet number
        self.aes: AESGCM | None = None
        self.key_id = b""
        self.key_used = 0  # packets under the current key since it was (re)installed
        self.key_start_slot = 0
        self.alarm = False
        self.interval_slots = self.rekey_interval_s * self.rate_hz
        self.switch_seqs: list[int] = []
        self.key_ids: list[str] = []
        self._dtypes: dict[np.dtype, np.dtype] = {}
        self._hdr_head = np.array([VERSION, 0, 0, 0, 0, 0, 0, 0], np.uint8)  # version, flags, 0, nonce salt 0
        for c in ("packets", "bytes", "keys_used", "key_bits_consumed", "exhaustion_events", "packets_on_reused_key",
                  "hold_s"):
            self.counters.setdefault(c, 0)

    def stop(self) -> None:
        release_store(self.store)

    # -- keys --
    def _try_take(self) -> bool:
        try:
            ((kid, key),) = take_keys_with_ids(self.store, self.resolver, 1, KEY_BITS, self.sae_id, self.peer_sae_id)
        except InsufficientKey:
            return False
        self.aes, self.key_id = AESGCM(key), uuid.UUID(kid).bytes
        self._key_arr = np.frombuffer(self.key_id, np.uint8)
        self.key_ids.append(kid)
        self.count("keys_used")
        self.count("key_bits_consumed", KEY_BITS)
        if self.alarm:
            self.log(f"key store refilled: new key {kid}; alarm cleared")
        self.alarm = False
        return True

    def _hold(self) -> None:
        t0 = time.monotonic()
        self.count("exhaustion_events")
        self.log(f"key store {self.store_path} ran dry: holding traffic (on_key_exhaustion: hold)")
        while not self._try_take():
            waited = time.monotonic() - t0
            if waited >= self.hold_timeout_s:
                self.count("hold_s", waited)
                raise BlockError(f"key store {self.store_path} dry for {waited:.1f} s (hold_timeout_s); no key to"
                                 " encrypt with")
            time.sleep(self.key_poll_s)
        self.count("hold_s", time.monotonic() - t0)

    def _rekey(self, slot: int) -> None:
        """Install a fresh key for the packet at ``slot`` (or apply the exhaustion policy)."""
        if not self._try_take():
            if self.on_key_exhaustion == "reuse_last_and_alarm" and self.aes is not None:
                if not self.alarm:
                    self.count("exhaustion_events")
                    self.log(f"ALARM: key store {self.store_path} ran dry: reusing key "
                             f"{uuid.UUID(bytes=self.key_id)} (on_key_exhaustion: reuse_last_and_alarm)")
                self.alarm = True
            else:
                self._hold()
        self.key_used = 0
        self.key_start_slot = slot

    def _segment_end(self, slots: np.ndarray | None, n: int, i: int) -> int:
        """Index one past the last packet from ``i`` on that may use the current key."""
        end = n
        if self.rekey_packets:
            end = min(end, i + self.rekey_packets - self.key_used)
        if slots is not None:
            limit = self.key_start_slot + self.interval_slots
            end = min(end, i + int(np.searchsorted(slots[i:], limit, side="left")))
        return end

    # -- data --
    def work(self, ins):
        f = ins["in"]
        src = f.data
        out, in_u8, out_u8 = packet_rows(src, self._dtypes, lambda d: encrypted_dtype(packet_bytes_of(d)))
        if in_u8 is None:
            return {"out": f.with_data(out)}
        n, rin, rout = len(out), in_u8.shape[1], out_u8.shape[1]
        out_u8[:, META_BYTES:NONCE_AT + 4] = self._hdr_head
        out_u8[:, NONCE_AT + 4:NONCE_AT + 12] = (
            np.arange(self.pn, self.pn + n, dtype=">u8").view(np.uint8).reshape(n, 8))
        src_mv = memoryview(in_u8.reshape(-1))
        out_mv = memoryview(out_u8.reshape(-1))
        slots = None
        if self.interval_slots:
            slots = src["slot"].astype(np.float64)
        if self.alarm and self.aes is not None:
            self._rekey(self._slot(src, slots, 0))  # retry a dry store at every frame while alarmed
        i = 0
        while i < n:
            if self.aes is None:
                self._rekey(self._slot(src, slots, i))
            end = self._segment_end(slots, n, i)
            if end == i:  # the current key's quota is spent at packet i
                self._rekey(self._slot(src, slots, i))
                end = self._segment_end(slots, n, i)
            if not self.switch_seqs or self.switch_seqs[-1][1] != self.key_ids[-1]:
                self.switch_seqs.append((int(src["seq"][i]), self.key_ids[-1]))
            out_u8[i:end, KEYID_AT:KEYID_AT + 16] = self._key_arr
            if self.alarm:
                out_u8[i:end, META_BYTES + 1] = FLAG_REUSED_KEY
                self.count("packets_on_reused_key", end - i)
            enc = self.aes.encrypt_into
            for j in range(i, end):  # one AEAD call per packet: GCM has no batch API in cryptography
                o, s = j * rout, j * rin
                enc(out_mv[o + NONCE_AT:o + NONCE_AT + 12], src_mv[s + META_BYTES:s + rin],
                    out_mv[o:o + AAD_BYTES], out_mv[o + AAD_BYTES:o + rout])
            self.key_used += end - i
            i = end
        self.pn += n
        c = self.counters
        c["packets"] += n
        c["bytes"] += n * (rin - META_BYTES)
        return {"out": f.with_data(out)}

    @staticmethod
    def _slot(src: np.ndarray, slots: np.ndarray | None, i: int) -> int:
        return int(src["slot"][i]) if slots is None else int(slots[i])

    def report(self) -> dict:
        return {"key_switches": [[s, k] for s, k in self.switch_seqs]}
