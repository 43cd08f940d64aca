"""Key store, AAU half: stage on the DU's request, commit (confirmed) only after the DU has committed, say "done".

Protocol and crash windows: see ``blocks/keystore_du.py`` (stage "store"). The AAU answers ``stage`` {n_bits} by
staging its copy (checking the length) and replying ``staged``; on ``committed`` it commits the block as confirmed
(the DU's commit is durable before it says "committed", so the block is committed at both ends and deliverable
here at once), gives the first ``auth_reserve_bits`` bits to the authentication pool as entry ``block id`` for
tagging and verifying (``replenish_authentication(bits, entry_id=..., send=True)``), keeps the rest, and answers
``done`` so that the DU confirms its copy too. It never sends ``abort`` for a block it has committed (the block
leaves this stage at its commit; a later DU message about it stops the run, ``AauHalf``).
At start-up it reconciles its committed ids with the DU's (dropping what the DU lacks, confirming the rest) before
answering the DU's hello with its own ids.
Ports: sync in; key in (amplify_aau); peer in/out (keystore_du).
"""
from __future__ import annotations

from qkdflow.distill.protocol import AauHalf, KeyBlock, ProtocolError, sync_ports_in
from qkdflow.runtime.block import BlockError, Message
from qkdflow.runtime.params import Param

from .keystore_du import STORE_PARAMS, block_meta, open_store, replenish


class KeystoreAau(AauHalf):
    """Key store, AAU half: stage / commit on the DU's word, replenish authentication."""

    stage = "store"
    has_next = False
    config_fields = ("auth_reserve_bits",)
    params = STORE_PARAMS + (
        Param("store_path", str, "out/keystore_aau.sqlite", doc="sqlite key store file (':memory:' = volatile)"),
    )
    inputs = sync_ports_in() + (Message("key", kind="distill.key", optional=False, doc="from amplify_aau"),
                                Message("peer", kind="distill.store", optional=False, doc="from keystore_du"))
    outputs = (Message("peer", kind="distill.store", doc="to keystore_du"),)

    def start(self) -> None:
        self.store = open_store(self.store_path)
        self.committed: list[str] = []
        self.count("final_key_bits", 0)
        self.count("stored_bits", 0)
        super().start()

    def on_hello(self, msg: dict) -> None:
        ids = msg.get("committed_ids")
        if not isinstance(ids, list):
            raise BlockError("store: hello without committed_ids")
        dropped = self.store.reconcile(ids)
        if dropped:
            self.log(f"start-up reconciliation: dropped {len(dropped)} block(s) the DU does not hold")
        self.count("reconciled_dropped_blocks", len(dropped))

    def hello_payload(self) -> dict:
        return {"committed_ids": self.store.committed_ids()}

    def _on_prev(self, msg: dict) -> None:
        if msg.get("type") == "abort":
            self.count("blocks_aborted")
        super()._on_prev(msg)

    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        st = blk.state
        if type_ == "stage" and not st:
            n = int(blk.bits.size)
            if int(msg.get("n_bits", -1)) != n or n <= self.auth_reserve_bits:
                self.abort(blk, f"stage of {msg.get('n_bits')} bits, the AAU's final key has {n} "
                                f"(auth_reserve_bits {self.auth_reserve_bits})")
                return
            self.store.stage(blk.id, blk.bits[self.auth_reserve_bits:], block_meta(blk.info))
            st["staged"] = True
            self.send_peer(blk, "staged")
        elif type_ == "committed" and st.get("staged") and not st.get("committed"):
            self.store.commit(blk.id, confirmed=True)  # the DU committed first: held at both ends
            st["committed"] = True
            replenish(self, blk.bits[:self.auth_reserve_bits], blk.id, send=True)
            self.count("final_key_bits", int(blk.bits.size))
            self.count("stored_bits", int(blk.bits.size) - self.auth_reserve_bits)
            self.committed.append(blk.id)
            self.send_peer(blk, "done")
            self.complete(blk, blk.bits)
        else:
            raise ProtocolError(f"unexpected {type_!r} in stage store")

    def on_abort(self, blk: KeyBlock) -> None:
        if blk.state.get("staged") and not blk.state.get("committed"):
            self.store.abort(blk.id)

    def stop(self) -> None:
        self.store.close()

    def report(self) -> dict:
        r = super().report()
        r["blocks_committed"] = len(self.committed)
        return r
