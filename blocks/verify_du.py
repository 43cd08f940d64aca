"""Error verification, DU half: compare a universal hash of the corrected key with the AAU's; discard on mismatch.

Stage "verify" (Lim et al., PRA 89, 022307 (2014), Sec. II "error verification"; hash: ``qkdflow.distill.verify``,
polynomial hash over GF(2^61 - 1), eps_cor <= ((l + 1)/p)^t). The DU sends ``request`` {n}; the AAU draws a fresh
hash key, answers ``tag`` {hash_key, tag} (its tag of Alice's key); the DU checks the key gives a collision bound
<= its ``eps_cor``, compares tags in constant time and answers ``ok`` (both hand the block on) or aborts the block
("verification hash mismatch": discarded at both ends). The published tag bits (61 t) are added to the leak.
Ports: sync in/out; key in (reconcile_du), key out (amplify_du); peer in/out (verify_aau).
"""
from __future__ import annotations

import numpy as np

from qkdflow.distill.protocol import DuHalf, KeyBlock, ProtocolError, sync_ports_in, sync_ports_out
from qkdflow.distill.verify import VerificationHash
from qkdflow.runtime.block import Message
from qkdflow.runtime.params import Param


class VerifyDu(DuHalf):
    """Error verification, DU half: checks the AAU's hash tag against the corrected key."""

    stage = "verify"
    config_fields = ("eps_cor",)
    params = (Param("eps_cor", float, 1e-12, doc="largest allowed hash collision probability", low=0.0, high=1.0,
                    low_open=True, high_open=True),)
    inputs = sync_ports_in() + (Message("key", kind="distill.key", optional=False, doc="from reconcile_du"),
                                Message("peer", kind="distill.verify", optional=False, doc="from verify_aau"))
    outputs = sync_ports_out() + (Message("key", kind="distill.key", doc="to amplify_du"),
                                  Message("peer", kind="distill.verify", doc="to verify_aau"))

    def begin(self, blk: KeyBlock) -> None:
        self.send_peer(blk, "request", n=int(blk.bits.size))

    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        if type_ != "tag":
            raise ProtocolError(f"unexpected {type_!r} in stage verify")
        try:
            hk = np.asarray(msg["hash_key"], dtype=np.uint64)
            vh = VerificationHash(hk, int(blk.bits.size))
            tag = bytes(msg["tag"])
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"tag message: {e}") from None
        if hk.ndim != 1 or hk.size < 1 or len(tag) != 8 * hk.size:
            raise ProtocolError("tag message: hash key / tag sizes disagree")
        if vh.eps_cor > self.eps_cor:
            self.abort(blk, f"verification hash too weak: collision bound {vh.eps_cor:.3g} > eps_cor {self.eps_cor:g}")
            return
        if not vh.check(blk.bits, tag):
            self.count("verification_failures")
            self.abort(blk, "verification hash mismatch (residual errors after error correction)")
            return
        blk.info.update(leak_verify=vh.leak_bits, eps_cor_hash=vh.eps_cor)
        self.send_peer(blk, "ok")
        self.complete(blk, blk.bits)
