"""Privacy amplification, DU half: final length from the finite-key formula with the actual leak; Toeplitz hash.

Stage "pa". Length (Lim et al., PRA 89, 022307 (2014), Eq. (1); ``qkdflow.distill.protocol.key_length``):
    l = floor[ s_X0 + s_X1 (1 - h(phi_X)) - lambda - 6 log2(21/eps_sec) - log2(2/eps_cor) ],
    lambda = leak_ec (parity / syndrome bits actually disclosed) + leak_verify (hash tag bits actually published),
with s_X0, s_X1, phi_X from the block's own counts (Eqs. 2-5). If l <= 0 the block is aborted. Otherwise the DU
sends ``request`` {length, n, n_x, n_z, m_z, leak_ec, leak_verify}; the AAU recomputes l from its own counts and
leak (any disagreement aborts), draws the Toeplitz seed and answers ``seed`` {seed bits}. Both compute
y = T x (``qkdflow.distill.toeplitz.toeplitz_hash``; Krawczyk 1994 two-universal family; ``modified``: the
(I | T') family of Hayashi & Tsurumaru 2016) and hand the l-bit key to the key store.
Ports: sync in/out; key in (verify_du), key out (keystore_du); peer in/out (amplify_aau).
"""
from __future__ import annotations

import numpy as np

from qkdflow.distill.protocol import DuHalf, KeyBlock, ProtocolError, key_length, sync_ports_in, sync_ports_out, \
    unpack_bits
from qkdflow.distill.toeplitz import seed_length, toeplitz_hash
from qkdflow.runtime.block import Message
from qkdflow.runtime.params import Param

PA_PARAMS = (
    Param("eps_sec", float, 1e-10, doc="secrecy parameter (Lim 2014)", low=0.0, high=1.0, low_open=True,
          high_open=True),
    Param("eps_cor", float, 1e-12, doc="correctness parameter (Lim 2014)", low=0.0, high=1.0, low_open=True,
          high_open=True),
    Param("modified", bool, False, doc="modified Toeplitz (I | T'), n - 1 seed bits"),
)
PA_FIELDS = ("eps_sec", "eps_cor", "modified")


def final_length(info: dict, eps_sec: float, eps_cor: float) -> tuple[int, object]:
    """(l, FiniteKey) for a block's info (counts, source, leak_ec, leak_verify)."""
    leak = int(info["leak_ec"]) + int(info["leak_verify"])
    fk = key_length(info["n_x"], info["n_z"], info["m_z"], info["source"], eps_sec, eps_cor, leak)
    return int(fk.length), fk


class AmplifyDu(DuHalf):
    """Privacy amplification, DU half: Lim 2014 length with the actual leak, Toeplitz hashing with the AAU's seed."""

    stage = "pa"
    config_fields = PA_FIELDS
    params = PA_PARAMS
    inputs = sync_ports_in() + (Message("key", kind="distill.key", optional=False, doc="from verify_du"),
                                Message("peer", kind="distill.pa", optional=False, doc="from amplify_aau"))
    outputs = sync_ports_out() + (Message("key", kind="distill.key", doc="to keystore_du"),
                                  Message("peer", kind="distill.pa", doc="to amplify_aau"))

    def begin(self, blk: KeyBlock) -> None:
        info = blk.info
        length, fk = final_length(info, self.eps_sec, self.eps_cor)
        info.update(final_bits=length, l_real=float(fk.length_real), phase_error_final=float(fk.phase_error),
                    eps_sec=self.eps_sec, eps_cor=self.eps_cor)
        self.log(f"block {blk.num}: n {blk.bits.size}, leak {info['leak_ec']} EC + {info['leak_verify']} tag bits, "
                 f"final length {length} bits (eps_sec {self.eps_sec:g}, eps_cor {self.eps_cor:g})")
        if length <= 0:
            self.abort(blk, f"finite-key length {float(fk.length_real):.0f} bits <= 0 with the actual leak "
                            f"{info['leak_ec']} + {info['leak_verify']} bits")
            return
        self.send_peer(blk, "request", length=length, n=int(blk.bits.size), n_x=list(info["n_x"]),
                       n_z=list(info["n_z"]), m_z=list(info["m_z"]), leak_ec=int(info["leak_ec"]),
                       leak_verify=int(info["leak_verify"]))

    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        if type_ != "seed":
            raise ProtocolError(f"unexpected {type_!r} in stage pa")
        n, length = int(blk.bits.size), int(blk.info["final_bits"])
        need = seed_length(n, length, modified=self.modified)
        if int(msg.get("n_seed", -1)) != need:
            raise ProtocolError(f"seed of {msg.get('n_seed')} bits, need {need}")
        seed = unpack_bits(msg["seed"], need)
        blk.info["seed_bits"] = need
        self.complete(blk, toeplitz_hash(blk.bits, seed, length, modified=self.modified))
