"""Privacy amplification, AAU half: check the DU's final length against its own, choose and send the seed, hash.

Protocol: see ``blocks/amplify_du.py`` (stage "pa"). The AAU recomputes the Lim 2014 length from its own
key-basis and test-basis counts per class (sift_aau), the DU's test-basis error counts (only Bob knows his bits)
and its own leak count (reconcile_aau parity/syndrome bits + verify_aau tag bits); any difference aborts the block.
The Toeplitz seed (n + l - 1 bits, or n - 1 with ``modified``) comes from ``numpy.random.default_rng(seed)``
(``seed`` unset = OS entropy) and is sent in the clear over the authenticated channel.
Ports: sync in/out; key in (verify_aau), key out (keystore_aau); peer in/out (amplify_du).
"""
from __future__ import annotations

import secrets

import numpy as np

from qkdflow.distill.protocol import AauHalf, KeyBlock, ProtocolError, pack_bits, sync_ports_in, sync_ports_out
from qkdflow.distill.toeplitz import seed_length, toeplitz_hash
from qkdflow.runtime.block import Message
from qkdflow.runtime.params import Param

from .amplify_du import PA_FIELDS, PA_PARAMS, final_length


class AmplifyAau(AauHalf):
    """Privacy amplification, AAU half: length cross-check, Toeplitz seed, hashing."""

    stage = "pa"
    config_fields = PA_FIELDS
    params = PA_PARAMS + (Param("seed", int, None, doc="seed of the Toeplitz-seed RNG (default: OS entropy)",
                                low=0),)
    inputs = sync_ports_in() + (Message("key", kind="distill.key", optional=False, doc="from verify_aau"),
                                Message("peer", kind="distill.pa", optional=False, doc="from amplify_du"))
    outputs = sync_ports_out() + (Message("key", kind="distill.key", doc="to keystore_aau"),
                                  Message("peer", kind="distill.pa", doc="to amplify_du"))

    def start(self) -> None:
        super().start()
        self._rng = None if self.seed is None else np.random.default_rng(self.seed)

    def _seed_bits(self, need: int) -> np.ndarray:
        if self._rng is None:  # OS CSPRNG
            return np.unpackbits(np.frombuffer(secrets.token_bytes((need + 7) // 8), np.uint8), count=need)
        return self._rng.integers(0, 2, need, dtype=np.uint8)

    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        if type_ != "request" or "done" in blk.state:
            raise ProtocolError(f"unexpected {type_!r} in stage pa")
        info = blk.info
        try:
            m_z = [int(x) for x in msg["m_z"]]
            du = {k: [int(x) for x in msg[k]] for k in ("n_x", "n_z")}
            du_leak = (int(msg["leak_ec"]), int(msg["leak_verify"]))
            du_len, n = int(msg["length"]), int(msg["n"])
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"request: {e}") from None
        for k in ("n_x", "n_z"):
            if du[k] != list(info[k]):
                self.abort(blk, f"{k} disagrees: DU {du[k]}, AAU {list(info[k])}")
                return
        if du_leak != (int(info["leak_ec"]), int(info["leak_verify"])) or n != blk.bits.size:
            self.abort(blk, f"leak/size disagree: DU {du_leak}, n {n}; AAU "
                            f"({info['leak_ec']}, {info['leak_verify']}), n {blk.bits.size}")
            return
        info["m_z"] = m_z
        length, fk = final_length(info, self.eps_sec, self.eps_cor)
        if length != du_len:
            self.abort(blk, f"final length disagrees: DU {du_len}, AAU {length}")
            return
        need = seed_length(n, length, modified=self.modified)
        seed = self._seed_bits(need)
        blk.state["done"] = True
        info.update(final_bits=length, seed_bits=need, eps_sec=self.eps_sec, eps_cor=self.eps_cor)
        self.send_peer(blk, "seed", seed=pack_bits(seed), n_seed=need)
        self.complete(blk, toeplitz_hash(blk.bits, seed, length, modified=self.modified))
