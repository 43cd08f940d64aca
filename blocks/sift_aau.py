"""Sifting, AAU half: answer the DU's detection announcements from Alice's preparation record; cut key blocks.

Protocol: see ``blocks/sift_du.py`` (stage "sift"). For every ``chunk`` {slots, bases} the AAU recomputes Alice's
(intensity class, basis, bit) for exactly those slots with ``qkdflow.prng.prep_choices`` on the preparation
descriptor (frame meta ``prep``: counter-based generator or recorded file), so the cost is proportional to the
clicks, not the slots. It answers ``sifted`` {match, cls of matched slots (two bits each), Alice's bits of matched
test-basis (X) slots (packed)} and appends the matched slots to its FIFO. A chunk naming slots the preparation
stream has not reached yet waits until it has (the DU cannot legitimately be ahead; a chunk beyond the end of the
preparation stream stops the run). On ``cut`` it cuts its FIFO at ``last_slot``, checks the key/test counts against
the DU's (a mismatch aborts the block at both ends) and the cut against ``block_bits``/``min_block_bits``, answers
``cut_ok`` with the source parameters (intensities, class probabilities, basis bias: public protocol parameters
the DU needs for the decoy bounds) and hands Alice's key bits (key basis Z, slot order) to reconcile_aau with the
block's public counts (n_x, n_z per intensity class).
Ports: in prep (PREP_DTYPE); sync out; key out (to reconcile_aau); peer in/out (sift_du).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from qkdflow import prng
from qkdflow.distill.protocol import (BlockSizeMixin, Half, KeyBlock, ProtocolError, decode_slots, envelope, pack_bits,
                                      pack_crumbs, parse, sync_ports_out, unpack_bits)
from qkdflow.runtime.block import BlockError, Message, Stream
from qkdflow.streams import PREP_DTYPE


class SiftAau(BlockSizeMixin, Half):
    """Sifting, AAU half: basis match, decoy-class announcement and test-basis bits for the DU's clicks."""

    stage = "sift"
    # chunk / sifted go with deferred tags (runtime.auth): the next cut (DU -> AAU) and cut_ok (AAU -> DU) carry the
    # one tag that covers them, and a block moves on only at those. Everything an answer discloses (matches, the
    # intensity classes and test-basis bits of matched slots) is public by the protocol; a forged chunk could only
    # make the AAU disclose them for slots an attacker names, after detection, and the cut's tag then fails.
    deferred_types = frozenset(("sifted",))
    peer_deferred_types = frozenset(("chunk",))
    side = "aau"
    has_prev = False
    inputs = (Stream("prep", PREP_DTYPE, doc="Alice's choices (descriptor in meta['prep'])"),
              Message("peer", kind="distill.sift", optional=False, doc="from sift_du"))
    outputs = sync_ports_out() + (Message("key", kind="distill.key", doc="Alice's sifted blocks to reconcile_aau"),
                                  Message("peer", kind="distill.sift", doc="to sift_du"))

    def start(self) -> None:
        super().start()
        self._desc: dict | None = None
        self._source: dict | None = None
        self._prep_stop = 0
        self._prep_ended = False
        self._peer_ended = False
        self._waiting: deque[tuple[int, np.ndarray, np.ndarray]] = deque()
        self._chunk_seq = 0
        self._fifo = {k: [] for k in ("slot", "basis", "bit", "cls")}
        self._num = 0
        self.count("matched", 0)

    # ---- stream ----
    def work(self, ins):
        self._check_fatal()
        f = ins["prep"]
        desc = f.meta.get("prep") if isinstance(f.meta, dict) else None
        if not isinstance(desc, dict):
            raise BlockError("prep: frame without a preparation descriptor (meta['prep'])")
        if self._desc is None:
            self._desc = desc
            mu = f.meta.get("intensities")
            if not isinstance(mu, list) or len(mu) != 3:
                raise BlockError("prep: frame meta lacks the three intensities (signal, decoy, vacuum)")
            self._source = {"intensities": [float(x) for x in mu],
                            "probabilities": [float(x) for x in desc["probabilities"]],
                            "basis_bias": float(desc["basis_bias"])}
        elif desc != self._desc:
            raise BlockError("prep: the preparation descriptor changed mid-stream")
        self._prep_stop = f.stop
        self._serve()
        return {"sync": self.pass_sync(f)}

    def end(self):
        self._prep_ended = True
        self._serve()
        self._maybe_finish()
        return None

    # ---- peer ----
    def _on_peer_raw(self, msg: dict) -> None:
        if self._fatal is not None:  # configuration mismatch: about to fail
            return
        t, bid, num, seq = parse(msg, "sift")
        if t == "hello":
            if self._peer_ok:
                raise BlockError("sift: second hello from the DU")
            self._hello(msg)
            return
        if not self._peer_ok:
            raise BlockError(f"sift: {t!r} from the DU before its hello")
        if t == "chunk":
            if seq != self._chunk_seq:
                raise BlockError(f"sift: chunk seq {seq}, expected {self._chunk_seq}")
            self._chunk_seq += 1
            try:
                slots = decode_slots(msg)
                bases = unpack_bits(msg.get("bases"), slots.size)
            except ProtocolError as e:
                raise BlockError(f"sift: chunk malformed: {e}") from None
            self._waiting.append((seq, slots, bases))
            self._serve()
        elif t == "cut":  # chunks still waiting hold later slots than any answered one: the cut is unaffected
            self._on_cut(msg, bid, num)
        elif t == "end":
            self._peer_ended = True
            self._maybe_finish()
        else:
            raise BlockError(f"sift: unexpected message type {t!r} from the DU")

    def _serve(self) -> None:
        while self._waiting and self._desc is not None:
            seq, slots, bases = self._waiting[0]
            if slots.size and slots[-1] >= self._prep_stop:
                if self._prep_ended:
                    raise BlockError(f"sift: the DU announced slot {int(slots[-1])}, beyond the preparation "
                                     f"stream's end {self._prep_stop}")
                return
            self._waiting.popleft()
            cls, basis, bit = prng.prep_choices(self._desc, slots)
            match = basis == bases
            # index arrays, each found once: a boolean-mask gather costs ~7x a take with the indices (numpy 2,
            # random masks; measured per 24k-click chunk)
            idx = np.flatnonzero(match)
            mb, mcls, mbit = basis[idx], cls[idx], bit[idx]
            self._send_raw(envelope("sift", "sifted", "", 0, seq, match=pack_bits(match), cls=pack_crumbs(mcls),
                                    test_bits=pack_bits(mbit[np.flatnonzero(mb)])))
            for k, v in (("slot", slots[idx]), ("basis", mb), ("bit", mbit), ("cls", mcls)):
                self._fifo[k].append(v)
            self.count("matched", int(idx.size))

    def _on_cut(self, msg: dict, bid: str, num: int) -> None:
        a = {k: (np.concatenate(v) if v else np.zeros(0, np.int64 if k == "slot" else np.uint8))
             for k, v in self._fifo.items()}
        last = int(msg["last_slot"])
        end = int(np.searchsorted(a["slot"], last, side="right"))
        part = {k: v[:end] for k, v in a.items()}
        self._fifo = {k: [v[end:]] for k, v in a.items()}
        key = part["basis"] == 0
        ki, ti = np.flatnonzero(key), np.flatnonzero(~key)
        n_key, n_test = int(ki.size), int(ti.size)
        blk = KeyBlock(num, bid, part["bit"][ki], {})
        if num != self._num + 1:
            raise BlockError(f"sift: block number {num} after {self._num}")
        self._num = num
        cfg = self.config()
        final = bool(msg.get("final"))
        if (not final and int(msg["n_key"]) != cfg["block_bits"]) or (final and int(msg["n_key"]) < cfg["min_block_bits"]):
            raise BlockError(f"sift: cut of {msg['n_key']} key bits breaks block_bits {cfg['block_bits']} / "
                             f"min_block_bits {cfg['min_block_bits']}")
        if n_key != int(msg["n_key"]) or n_test != int(msg["n_test"]):
            self._send_raw(envelope("sift", "abort", bid, num, 0, reason=(
                f"sift records disagree: AAU has {n_key} key / {n_test} test bits, DU {msg['n_key']} / {msg['n_test']}")))
            self.notice_abort(num, bid, "sift records disagree", "sift", by_peer=False)
            return
        blk.info = {"num": num, "block": bid, "first_slot": int(part["slot"][0]) if end else -1, "last_slot": last,
                    "n_key": n_key, "n_test": n_test,
                    "n_x": np.bincount(part["cls"][ki], minlength=3).tolist(),
                    "n_z": np.bincount(part["cls"][ti], minlength=3).tolist(), "source": self._source}
        blk.msgs = 2
        blk.trips = 1
        self._send_raw(envelope("sift", "cut_ok", bid, num, 0, source=self._source))
        self.forward(blk, blk.bits)

    def _maybe_finish(self) -> None:
        if self._prep_ended and self._peer_ended and not self._done:
            self.emit("key", {"type": "end"})
            self._done = True
