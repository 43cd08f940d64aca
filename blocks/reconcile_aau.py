"""Error correction, AAU half (Alice): answers Cascade parity requests or sends LDPC syndromes; counts the leak.

Protocol: see ``blocks/reconcile_du.py`` (stage "ec"). Alice's key is the reference and never changes. The AAU
counts every bit it discloses (Cascade: the parity bits of its replies; LDPC: m - p per syndrome frame, plus every
punctured value and extension syndrome bit revealed in blind mode) and, on the
DU's ``done``, checks that the DU's count equals its own before handing the block to verify_aau (a mismatch
aborts the block at both ends). LDPC punctured symbols must be secret random bits: ``ldpc_seed`` unset (default)
draws them from OS entropy; set it only for reproducible simulations.
Ports: sync in/out; key in (sift_aau), key out (verify_aau); peer in/out (reconcile_du).
"""
from __future__ import annotations

import numpy as np

from qkdflow.distill import cascade
from qkdflow.distill.protocol import AauHalf, KeyBlock, ProtocolError, sync_ports_in, sync_ports_out
from qkdflow.distill import ldpc
from qkdflow.runtime.block import Message
from qkdflow.runtime.params import Param

from .reconcile_du import METHOD_FIELDS, METHOD_PARAMS, ldpc_frames


class ReconcileAau(AauHalf):
    """Error correction, AAU half: Cascade parity answers or LDPC syndromes, exact leak accounting."""

    stage = "ec"
    # Cascade's and blind LDPC's round trips go with deferred tags: one tag each way per block, on done / done_ok,
    # which must arrive tagged before the key moves on (runtime.auth, protocol.Half.deferred_types)
    deferred_types = frozenset(("reply", "reveals"))
    peer_deferred_types = frozenset(("request", "reveal_request"))
    config_fields = METHOD_FIELDS
    params = METHOD_PARAMS + (
        Param("ldpc_seed", int, None, doc="seed of the LDPC punctured bits (default: OS entropy)", low=0),
    )
    inputs = sync_ports_in() + (Message("key", kind="distill.key", optional=False, doc="from sift_aau"),
                                Message("peer", kind="distill.ec", optional=False, doc="from reconcile_du"))
    outputs = sync_ports_out() + (Message("key", kind="distill.key", doc="to verify_aau"),
                                  Message("peer", kind="distill.ec", doc="to reconcile_du"))

    def start(self) -> None:
        super().start()
        self._alice_ldpc = None
        if self.method == "ldpc":
            codes = ldpc.load_or_build_codes(self.ldpc_code_bits, self.ldpc_code_seed, family=self.ldpc_family)
            self._alice_ldpc = ldpc.LdpcAlice(codes, seed=self.ldpc_seed, efficiency=self.ldpc_efficiency,
                                              blind_start=self.ldpc_blind_start, blind_step=self.ldpc_blind_step,
                                              blind_max=self.ldpc_blind_max, blind_reveal=self.ldpc_reveal)

    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        st = blk.state
        if type_ == "start" and "leak" not in st:
            if msg.get("method") != self.method or int(msg.get("n", -1)) != blk.bits.size or (
                    self.method == "ldpc" and msg.get("mode") != self.ldpc_mode):
                raise ProtocolError(f"start for method {msg.get('method')!r}, n {msg.get('n')} does not match this "
                                    f"block ({self.method}, n {blk.bits.size})")
            q = float(msg["qber_estimate"])
            st["leak"] = 0
            if self.method == "cascade":
                try:
                    st["alice"] = cascade.CascadeAlice(blk.bits, int(msg["cascade_seed"]), self.cascade_variant, q)
                except ValueError as e:
                    raise ProtocolError(str(e)) from None
                if msg.get("request"):
                    self._answer(blk, msg["request"])
            else:
                frames, pads = ldpc_frames(blk.bits, self._alice_ldpc.frame_bits)
                out, blind = [], []
                try:
                    for i, fb in enumerate(frames):
                        if self.ldpc_mode == "blind":
                            sm, fr = self._alice_ldpc.encode_blind(fb, q, frame_id=(blk.num << 16) + i,
                                                                   pad_bits=pads[i])
                            blind.append(fr)
                        else:
                            sm = self._alice_ldpc.encode(fb, q, frame_id=(blk.num << 16) + i)
                        st["leak"] += sm.leak_bits
                        out.append(sm.to_bytes())
                except ValueError as e:
                    self.abort(blk, f"LDPC: {e}")
                    return
                if blind:
                    st["blind"] = blind        # the words with their secret punctured values, until the block is done
                self.send_peer(blk, "syndromes", frames=out)
        elif type_ == "request" and "alice" in st:
            self._answer(blk, msg["request"])
        elif type_ == "reveal_request" and "blind" in st:
            idx, frames = msg.get("frames"), st["blind"]
            if not (isinstance(idx, list) and idx and all(isinstance(i, int) and 0 <= i < len(frames) for i in idx)
                    and len(set(idx)) == len(idx)):
                raise ProtocolError("reveal_request: frames must be distinct frame indices of this block")
            positions = msg.get("positions")
            want = self.ldpc_reveal == "reliability"
            if (positions is not None) != want or (
                    want and not (isinstance(positions, list) and len(positions) == len(idx))):
                raise ProtocolError("reveal_request: " + ("one list of positions per frame expected" if want else
                                                          "positions given, but ldpc_reveal is order"))
            out = []
            for j, i in enumerate(idx):
                try:
                    asked = None if positions is None or positions[j] is None else ldpc.decode_positions(positions[j])
                    r = frames[i].answer(asked)
                except ValueError as e:
                    raise ProtocolError(f"reveal_request: frame {i}: {e}") from None
                if r is None:
                    raise ProtocolError(f"reveal_request: frame {i} has no value left to reveal")
                st["leak"] += r.leak_bits
                out.append(r.to_bytes())
            self.send_peer(blk, "reveals", frames=out)
        elif type_ == "done" and "leak" in st:
            if int(msg.get("leak_bits", -1)) != st["leak"]:
                self.abort(blk, f"leak accounting disagrees: DU counts {msg.get('leak_bits')} bits, the AAU "
                                f"disclosed {st['leak']}")
                return
            blk.info["leak_ec"] = st["leak"]
            st.pop("alice", None)
            st.pop("blind", None)
            self.send_peer(blk, "done_ok")
            self.complete(blk, blk.bits)
        else:
            raise ProtocolError(f"unexpected {type_!r} in stage ec")

    def _answer(self, blk: KeyBlock, raw: bytes) -> None:
        try:
            rep = blk.state["alice"].answer(cascade.ParityRequest.from_bytes(raw))
        except ValueError as e:
            raise ProtocolError(f"Cascade request: {e}") from None
        blk.state["leak"] += int(np.asarray(rep.bits).size)
        self.send_peer(blk, "reply", reply=rep.to_bytes())
