"""Error verification, AAU half: draw a fresh hash key, publish the tag of Alice's key, wait for the DU's verdict.

Protocol: see ``blocks/verify_du.py`` (stage "verify"). The hash key is drawn per block from
``numpy.random.default_rng(seed)`` (``seed`` unset = OS entropy; the key is public once sent, but it must not be
predictable before the corrected keys are fixed). The tag is ``VerificationHash.new(n, eps_cor)``: t = smallest
number of evaluations with ((l + 1)/p)^t <= eps_cor; 61 t bits are counted as leak.
Ports: sync in/out; key in (reconcile_aau), key out (amplify_aau); peer in/out (verify_du).
"""
from __future__ import annotations

import numpy as np

from qkdflow.distill.protocol import AauHalf, KeyBlock, ProtocolError, sync_ports_in, sync_ports_out
from qkdflow.distill.verify import VerificationHash
from qkdflow.runtime.block import Message
from qkdflow.runtime.params import Param


class VerifyAau(AauHalf):
    """Error verification, AAU half: publishes a polynomial-hash tag of Alice's key."""

    stage = "verify"
    config_fields = ("eps_cor",)
    params = (Param("eps_cor", float, 1e-12, doc="hash collision probability bound", low=0.0, high=1.0,
                    low_open=True, high_open=True),
              Param("seed", int, None, doc="seed of the hash-key RNG (default: OS entropy)", low=0))
    inputs = sync_ports_in() + (Message("key", kind="distill.key", optional=False, doc="from reconcile_aau"),
                                Message("peer", kind="distill.verify", optional=False, doc="from verify_du"))
    outputs = sync_ports_out() + (Message("key", kind="distill.key", doc="to amplify_aau"),
                                  Message("peer", kind="distill.verify", doc="to verify_du"))

    def start(self) -> None:
        super().start()
        self._rng = None if self.seed is None else np.random.default_rng(self.seed)

    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        if type_ == "request" and "vh" not in blk.state:
            if int(msg.get("n", -1)) != blk.bits.size:
                self.abort(blk, f"verification of {msg.get('n')} bits requested, the AAU's key has {blk.bits.size}")
                return
            vh = VerificationHash.new(int(blk.bits.size), self.eps_cor, self._rng)
            blk.state["vh"] = vh
            self.send_peer(blk, "tag", hash_key=np.asarray(vh.hash_key, dtype=np.uint64), tag=vh.tag(blk.bits))
        elif type_ == "ok" and "vh" in blk.state:
            vh = blk.state["vh"]
            blk.info.update(leak_verify=vh.leak_bits, eps_cor_hash=vh.eps_cor)
            self.complete(blk, blk.bits)
        else:
            raise ProtocolError(f"unexpected {type_!r} in stage verify")
