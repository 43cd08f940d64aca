"""Key store, DU half: two-phase commit of each final key block at both ends, confirmation, authentication key.

Stage "store". Both ends keep a ``qkdflow.distill.keystore.KeyStore`` (sqlite, WAL, synchronous=FULL) at
``store_path``, opened as its owner (one key-store block per file; ``qkdflow kms`` and the fronthaul blocks open the
same file as readers and deliver keys while the flowgraph runs). Start-up: the DU's ``hello`` carries its committed
block ids; the AAU calls ``KeyStore.reconcile(du_ids)`` (drops what the DU lacks, confirms the rest) and answers
with its own ids; the DU reconciles with those. Per block (same UUID at both ends, metadata: key-basis QBER,
leak = EC + tag bits, eps_sec, eps_cor):

    DU: stage(pending) -> "stage" -> AAU: stage(pending) -> "staged" -> DU: commit(unconfirmed) -> "committed"
    -> AAU: commit(confirmed) -> "done" -> DU: confirm

A block is deliverable (``take_keys``, KMS, fronthaul) only once confirmed: at the AAU at its commit (it commits only
on the DU's "committed", so the DU's commit is durable already), at the DU on "done" or at the next start-up
reconciliation. Authentication key: the first ``auth_reserve_bits`` bits of the final key go to the Wegman-Carter
pool as entry ``block id`` (same bits, same order at both ends): the DU adds it at its commit, before sending
"committed", for verifying only (``send=False``: the AAU may never commit) and authorizes it for tagging on "done";
the AAU adds it at its commit for both (``send=True``). The rest of the key is stored.
Crash windows ("at both ends or neither"; "nothing delivered from a block one end lacks"):
  * before the DU's commit: both copies are pending; the owner deletes pending blocks when it reopens the store;
  * after the DU's commit, before the AAU's: the DU's copy is committed but unconfirmed (never delivered), the AAU's
    pending copy is deleted at its restart; the next hello exchange makes the DU's ``reconcile`` delete it;
  * after the AAU's commit, before the DU has confirmed: the AAU's copy is confirmed (may be delivered), the DU's
    is committed and unconfirmed; the next hello exchange confirms it at the DU (both hold it);
  * after the DU's confirm: consistent. The AAU never commits a block the DU has not committed, and the DU never
    deletes a committed block except in the start-up reconciliation (a mid-run abort after its commit leaves the
    block unconfirmed for the reconciliation to settle; anything but "done" after "committed" stops the run).
A peer that disappears mid-block stops the run (runtime); what is left is at most a pending block or an unconfirmed
one, never a block deliverable at one end only.
A final key no longer than ``auth_reserve_bits`` aborts the block (nothing to store).

``report()`` is the run's distillation summary: per-block records, totals (sifted bits, QBER, leak, final key
bits, eps), secure key rate in bit/s of the simulated clock (final bits over slots / rate_hz, slots from the sync
stream), messages and round trips per block and stage, and the closed-form finite-key prediction for the same
link and block size (``qkdflow.physics.link.finite_key_for`` on ``closed_form_params(graph)``, n_X = the run's
mean block, f = the run's measured EC efficiency).
Ports: sync in; key in (amplify_du); peer in/out (keystore_aau).
"""
from __future__ import annotations

import math
import os

import numpy as np

import blocks.detector  # noqa: F401  main-thread imports of from_graph's lazy ones (CPython 3.11.7 concurrent-compile
import blocks.wdm_mux  # noqa: F401  bug, see blocks/slot_assigner.py)
import qkdflow.physics.finite_key  # noqa: F401

from qkdflow.distill.keystore import KeyBlockMeta, KeyStore, KeyStoreError
from qkdflow.distill.protocol import DuHalf, KeyBlock, ProtocolError, binary_entropy, sync_ports_in
from qkdflow.physics.from_graph import closed_form_params
from qkdflow.physics.link import finite_key_for, parse_params
from qkdflow.runtime.block import BlockError, Message
from qkdflow.runtime.params import Param

STORE_PARAMS = (
    Param("auth_reserve_bits", int, 4096, unit="bits",
          doc="first bits of every final key given to the authentication key pool", low=0),
)


def open_store(path: str) -> KeyStore:
    """Open ``path`` as its owner (the protocol's writer); a second owner or an unusable file is one line."""
    if path != ":memory:":
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
    try:
        return KeyStore(path, owner=True)
    except KeyStoreError as e:
        raise BlockError(f"store_path: {e}") from None


def block_meta(info: dict) -> KeyBlockMeta:
    return KeyBlockMeta(qber=float(info.get("qber_key", info.get("qber_test", 0.0))),
                        leak_bits=int(info["leak_ec"]) + int(info["leak_verify"]),
                        eps_sec=float(info["eps_sec"]), eps_cor=float(info["eps_cor"]))


def replenish(block, bits: np.ndarray, entry_id: str, send: bool) -> None:
    """Give ``bits`` to the node's authentication key pool as entry ``entry_id`` (``send``: may tag with it now)."""
    if bits.size == 0:
        return
    fn = getattr(block, "replenish_authentication", None)
    if fn is None:
        block.count("auth_replenish_skipped_bits", int(bits.size))
    else:
        fn(bits, entry_id=entry_id, send=send)
        block.count("auth_replenished_bits", int(bits.size))


class KeystoreDu(DuHalf):
    """Key store, DU half: stage, commit after the AAU has staged, confirm on the AAU's "done", report the run."""

    stage = "store"
    has_next = False
    config_fields = ("auth_reserve_bits",)
    params = STORE_PARAMS + (
        Param("store_path", str, "out/keystore_du.sqlite", doc="sqlite key store file (':memory:' = volatile)"),
        Param("rate_hz", float, 1.0e9, unit="Hz", doc="slot rate (from clock.rate_hz) for the key rate",
              low=0.0, low_open=True),
    )
    inputs = sync_ports_in() + (Message("key", kind="distill.key", optional=False, doc="from amplify_du"),
                                Message("peer", kind="distill.store", optional=False, doc="from keystore_aau"))
    outputs = (Message("peer", kind="distill.store", doc="to keystore_aau"),)

    def start(self) -> None:
        self.store = open_store(self.store_path)
        self.records: list[dict] = []
        self.aborted: list[dict] = []
        self.count("final_key_bits", 0)
        self.count("stored_bits", 0)
        self.count("reconciled_confirmed_blocks", 0)
        super().start()

    def hello_payload(self) -> dict:
        return {"committed_ids": self.store.committed_ids()}

    def on_hello(self, msg: dict) -> None:
        ids = msg.get("committed_ids")
        if not isinstance(ids, list):
            raise BlockError("store: hello without committed_ids")
        unconfirmed = set(self.store.committed_ids()) - set(self.store.confirmed_ids())
        dropped = self.store.reconcile(ids)
        confirmed = len(unconfirmed - set(dropped))
        if dropped or confirmed:
            self.log(f"start-up reconciliation: dropped {len(dropped)} block(s) the AAU does not hold, confirmed "
                     f"{confirmed} block(s) held at both ends")
        self.count("reconciled_dropped_blocks", len(dropped))
        self.count("reconciled_confirmed_blocks", confirmed)

    def relay_abort(self, msg: dict) -> None:
        self.aborted.append({"num": int(msg["num"]), "stage": str(msg.get("stage")), "reason": str(msg.get("reason"))})
        self.count("blocks_aborted")

    def begin(self, blk: KeyBlock) -> None:
        n = int(blk.bits.size)
        if n <= self.auth_reserve_bits:
            self.abort(blk, f"final key {n} bits <= auth_reserve_bits {self.auth_reserve_bits}")
            return
        self.store.stage(blk.id, blk.bits[self.auth_reserve_bits:], block_meta(blk.info))
        blk.state["staged"] = True
        self.send_peer(blk, "stage", n_bits=n)

    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        st = blk.state
        if type_ == "staged" and st.get("staged") and not st.get("committed"):
            self.store.commit(blk.id)  # unconfirmed: the AAU may never commit (crash): not deliverable yet
            st["committed"] = True
            # verify-only until "done": the AAU holds the entry only once it has committed
            replenish(self, blk.bits[:self.auth_reserve_bits], blk.id, send=False)
            self.send_peer(blk, "committed")
        elif type_ == "done" and st.get("committed"):
            self.store.confirm(blk.id)
            if self.auth_reserve_bits:  # the AAU holds entry blk.id now: this end may tag with it
                self.authorize_authentication(blk.id)
            n = int(blk.bits.size)
            self.count("final_key_bits", n)
            self.count("stored_bits", n - self.auth_reserve_bits)
            info = blk.info
            info.setdefault("messages", {})["store"] = blk.msgs
            info.setdefault("round_trips", {})["store"] = blk.trips
            self.records.append(info)
            self.complete(blk, blk.bits)
        elif st.get("committed"):
            # After "committed" the AAU may hold the block confirmed: only the start-up reconciliation may drop it.
            raise BlockError(f"store: {type_!r} from the AAU for block {blk.num} after the DU's commit (expected "
                             "'done'); the block is settled by the start-up reconciliation")
        else:
            raise ProtocolError(f"unexpected {type_!r} in stage store")

    def on_abort(self, blk: KeyBlock) -> None:
        # a committed (unconfirmed) block stays for the start-up reconciliation; it is never delivered before
        if blk.state.get("staged") and not blk.state.get("committed"):
            self.store.abort(blk.id)
        elif blk.state.get("committed"):
            self.count("unconfirmed_after_abort")

    def notice_abort(self, num: int, block_id: str, reason: str, stage: str, by_peer: bool) -> None:
        self.aborted.append({"num": num, "stage": stage, "reason": reason})
        super().notice_abort(num, block_id, reason, stage, by_peer)

    def stop(self) -> None:
        self.store.close()
        r = self.report()  # the main job's last word: what the key distillation delivered
        cf_bps = (r.get("closed_form") or {}).get("secure_key_rate_bps")
        cf = "n/a (no simulated link)" if cf_bps is None else f"{cf_bps:.4g} bit/s"
        qber = "-" if r["qber_key"] is None else f"{100 * r['qber_key']:.2f} %"
        f_ec = "" if r["ec_efficiency"] is None else f" (f = {r['ec_efficiency']:.3f})"
        self.log(f"key: {r['blocks_committed']} block(s) committed at both ends, {r['blocks_aborted']} aborted; "
                 f"sifted {r['sifted_bits']} bits, QBER {qber}, leak {r['leak_ec_bits'] + r['leak_verify_bits']} "
                 f"bits{f_ec}, final key {r['final_key_bits']} bits = {r['secure_key_rate_bps']:.4g} bit/s of the "
                 f"simulated clock (eps_sec {r['eps_sec']}, eps_cor {r['eps_cor']}); closed-form finite key for the "
                 f"same blocks: {cf}")

    # ---- the run's summary -------------------------------------------------------------------------
    def report(self) -> dict:
        recs = self.records
        rate = self._rate_hz or self.rate_hz
        sim_s = self._slots / rate if rate else 0.0
        final = sum(int(r["final_bits"]) for r in recs)
        sifted = sum(int(r["n_key"]) for r in recs)
        leak_ec = sum(int(r["leak_ec"]) for r in recs)
        leak_v = sum(int(r["leak_verify"]) for r in recs)
        errs = sum(int(r["errors_corrected"]) for r in recs)
        hsum = sum(int(r["n_key"]) * binary_entropy(float(r["qber_key"])) for r in recs)
        stages = sorted({s for r in recs for s in r.get("messages", {})})
        out = {
            "blocks_committed": len(recs), "blocks_aborted": len(self.aborted),
            "aborts": self.aborted[:50],
            "sifted_bits": sifted,
            "qber_test": (sum(sum(r["m_z"]) for r in recs) / max(1, sum(sum(r["n_z"]) for r in recs))) if recs else None,
            "qber_key": errs / sifted if sifted else None,
            "leak_ec_bits": leak_ec, "leak_verify_bits": leak_v,
            "ec_efficiency": leak_ec / hsum if hsum > 0 else None,
            "final_key_bits": final, "stored_bits": final - len(recs) * self.auth_reserve_bits,
            "eps_sec": recs[0]["eps_sec"] if recs else None, "eps_cor": recs[0]["eps_cor"] if recs else None,
            "slots": int(self._slots), "rate_hz": rate, "simulated_s": sim_s,
            "secure_key_rate_bps": final / sim_s if sim_s > 0 else 0.0,
            "messages_per_block": {s: float(np.mean([r["messages"].get(s, 0) for r in recs])) for s in stages},
            "round_trips_per_block": {s: float(np.mean([r["round_trips"].get(s, 0) for r in recs])) for s in stages},
            "stage_s_per_block": {k: float(np.mean([r["stage_s"].get(k, 0.0) for r in recs]))
                                  for k in sorted({k for r in recs for k in r.get("stage_s", {})})},
            "blocks": [{k: r.get(k) for k in ("num", "block", "n_key", "n_test", "n_x", "n_z", "m_z", "qber_test",
                                                "qber_key", "leak_ec", "leak_verify", "final_bits", "l_real",
                                                "first_slot", "last_slot", "source", "eps_sec", "eps_cor")}
                       for r in recs],
            "busy_s": round(self._busy_s, 6),
        }
        out["closed_form"] = self._prediction(recs, out)
        return out

    def _prediction(self, recs: list[dict], out: dict) -> dict:
        if self.graph is None:
            return {"error": "no flowgraph"}
        if not any(spec.type == "detector" for spec in self.graph.blocks.values()):
            return {"error": "no simulated detector in this flowgraph (a recording): nothing to predict"}
        try:
            params = closed_form_params(self.graph)
            meta = params.pop("meta", {})
            n_x = float(np.mean([r["n_key"] for r in recs])) if recs else float(self._block_bits_hint())
            f = out["ec_efficiency"] or 1.16
            eps_sec = recs[0]["eps_sec"] if recs else 1e-10
            eps_cor = recs[0]["eps_cor"] if recs else 1e-12
            params["postprocessing"] = {"ec_efficiency": float(f), "eps_sec": eps_sec, "eps_cor": eps_cor}
            p = parse_params(params)
            length_km = float(params.get("fibre", {}).get("length_km", 0.0))
            rate_pp, fk, n_pulses = finite_key_for(p, length_km, n_x)
            return {"n_x": n_x, "ec_efficiency": float(f), "length_km": length_km,
                    "final_bits_per_block": float(fk.length[0]), "l_real_per_block": float(fk.length_real[0]),
                    "pulses_per_block": float(n_pulses), "secure_key_rate_bps": max(rate_pp, 0.0) * p.rate_hz,
                    "eavesdroppers_not_modelled": meta.get("eavesdroppers", [])}
        except Exception as e:  # the prediction must never hide the run's figures
            return {"error": f"{type(e).__name__}: {e}"}

    def _block_bits_hint(self) -> int:
        for spec in self.graph.blocks.values():
            if spec.type == "sift_du":
                return int(spec.params.get("block_bits", 100_000))
        return 100_000
