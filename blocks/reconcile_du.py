"""Error correction, DU half (Bob): Cascade (interactive) or rate-adaptive LDPC (one-way), chosen per flowgraph.

Stage "ec". The DU corrects its key towards the AAU's (Alice's key is the reference).
  * ``method: cascade`` (``qkdflow.distill.cascade``, Brassard & Salvail 1993 with the variants of Martinez-Mateo
    et al., QIC 15 (2015)): ``start`` {method, n, qber_estimate, cascade_seed, request} then ``request`` /
    ``reply`` round trips, one message per Cascade round carrying every parity asked in that round (all open
    binary searches batched; ``CascadeBob`` schedule). The permutation seed is public and the same for every
    block of a run (``cascade_seed = seed``), so each end draws Cascade's permutations once per run and block
    length class (``cascade._master_permutation``) instead of per block (~40 % of Cascade's time at 10^6 bits).
    Fresh permutations per block would buy nothing: the channel's errors do not depend on them, the per-block
    seed used before (seed * 2^32 + block number) was just as public and predictable, and an adversary who shapes
    errors against known permutations can at most make verification discard the block — which she can do anyway
    by disturbing the channel. The leak is counted exactly either way.
  * ``method: ldpc`` (``qkdflow.distill.ldpc``): ``start`` {method, n, qber_estimate}; the AAU answers
    ``syndromes`` with one syndrome per frame of the block (all frames in one message). The key is zero-padded to
    whole frames at both ends (public padding: the syndrome leak is charged in full for the last frame, which
    over-counts, never under-counts; in blind mode the last frame's first attempt is planned for its real bits and
    Bob decodes the padding as known zeros, so a part-filled frame leaks about what its real bits need). All
    frames are decoded in one batch (``LdpcBob.decode_many``).
    ``ldpc_mode: oneshot`` (Elkouss et al., ITW 2010): rate from the QBER estimate and ``ldpc_efficiency``; a frame
    that does not converge aborts the block.
    ``ldpc_mode: blind`` (Martinez-Mateo, Elkouss, Martin, QIC 12, 791 (2012); ``ldpc.BlindDecoder``): the syndromes
    start at a high rate (efficiency ``ldpc_blind_start``); after each decoding round the DU sends ``reveal_request``
    {frames: indices of the frames that failed, positions: per frame the symbols it asks for (``ldpc_reveal:
    reliability``, the default: the least reliable ones after BP, Kiktenko et al., PR Applied 8, 044017 (2017);
    ``ldpc.encode_positions``)} and the AAU answers ``reveals`` {frames: one ``RevealMessage`` per requested
    frame: its values there, or with ``ldpc_reveal: order`` the values of its next punctured symbols, then of its
    code's extension syndrome bits}; one message each way per round for the whole block. A failing frame with
    nothing left to reveal aborts the block.
  * Then ``done`` {leak_bits, errors_corrected}; the AAU compares the leak with the parity/syndrome bits it
    disclosed itself and answers ``done_ok`` (or aborts). Only then does the block move on.
Leak = exactly the bits disclosed: Cascade reply parity bits (``CascadeBob.leak_bits``); LDPC sum of (m - p) per
frame (``SyndromeMessage.leak_bits``), in blind mode m - p0 + revealed values per frame. Key-basis QBER after correction = corrected errors / n (reported).
Abort notices from estimate_du are relayed to reconcile_aau, which holds the AAU's copy of that block.
Ports: sync in/out; key in (estimate_du), key out (verify_du); peer in/out (reconcile_aau).
"""
from __future__ import annotations

import numpy as np

from qkdflow.distill import cascade
from qkdflow.distill.protocol import DuHalf, KeyBlock, ProtocolError, binary_entropy, envelope, sync_ports_in, \
    sync_ports_out
from qkdflow.distill import ldpc, ldpc_codes
from qkdflow.runtime.block import Message
from qkdflow.runtime.params import Param

METHOD_PARAMS = (
    Param("method", str, "cascade", doc="error-correction method", choices=("cascade", "ldpc")),
    Param("cascade_variant", str, "hybrid", doc="Cascade parameter set (qkdflow.distill.cascade.VARIANTS)",
          choices=tuple(sorted(cascade.VARIANTS))),
    Param("ldpc_code_bits", int, 10_000, unit="bits", doc="LDPC mother-code length n", low=256, high=4_000_000),
    Param("ldpc_code_seed", int, 1, doc="seed of the LDPC code construction (both ends)", low=0),
    Param("ldpc_family", str, ldpc.DEFAULT_CODE_FAMILY,
          doc="LDPC mother codes: de (density-evolution designed high rates) or elkouss2009",
          choices=tuple(ldpc_codes.FAMILIES)),
    Param("ldpc_efficiency", float, 1.1, doc="one-shot LDPC: target reconciliation efficiency f (code rate choice)",
          low=1.0),
    Param("ldpc_mode", str, "blind", doc="LDPC rate: blind (adapted by reveal rounds) or oneshot (from the estimate)",
          choices=("blind", "oneshot")),
    Param("ldpc_blind_start", float, ldpc.DEFAULT_BLIND_START, doc="blind LDPC: efficiency f of the first attempt",
          low=0.5, high=2.0),
    Param("ldpc_blind_step", float, ldpc.DEFAULT_BLIND_STEP, doc="blind LDPC: efficiency added per reveal round",
          low=0.001, high=1.0),
    Param("ldpc_blind_max", float, ldpc.DEFAULT_BLIND_MAX,
          doc="blind LDPC: mother code = highest rate reaching this f when all is revealed", low=1.0, high=3.0),
    Param("ldpc_reveal", str, ldpc.DEFAULT_REVEAL,
          doc="blind LDPC: values disclosed where the DU is least sure (reliability) or in a fixed order",
          choices=ldpc.REVEAL_MODES),
)
METHOD_FIELDS = ("method", "cascade_variant", "ldpc_code_bits", "ldpc_code_seed", "ldpc_family", "ldpc_efficiency",
                 "ldpc_mode", "ldpc_blind_start", "ldpc_blind_step", "ldpc_blind_max", "ldpc_reveal")


def ldpc_frames(bits: np.ndarray, frame_bits: int) -> tuple[np.ndarray, list[int]]:
    """Zero-pad the key to whole LDPC frames: (frames of shape (n_frames, frame_bits), padding bits per frame,
    all in the last one). Both ends derive the same padding from the block length."""
    n_frames = max(1, -(-bits.size // frame_bits))
    padded = np.zeros(n_frames * frame_bits, dtype=np.uint8)
    padded[:bits.size] = bits
    return padded.reshape(n_frames, frame_bits), [0] * (n_frames - 1) + [padded.size - bits.size]


class ReconcileDu(DuHalf):
    """Error correction, DU half: drives Cascade or decodes LDPC syndromes; leak counted exactly."""

    stage = "ec"
    # Cascade's and blind LDPC's round trips go with deferred tags: one tag each way per block, on done / done_ok,
    # which must arrive tagged before the key moves on (runtime.auth, protocol.Half.deferred_types)
    deferred_types = frozenset(("request", "reveal_request"))
    peer_deferred_types = frozenset(("reply", "reveals"))
    config_fields = METHOD_FIELDS
    params = METHOD_PARAMS + (
        Param("seed", int, 0, doc="public seed of Cascade's shuffles (the same for every block of the run)", low=0),
        Param("ldpc_max_iterations", int, 200, doc="belief-propagation iterations per frame (last blind attempt)",
              low=1),
        Param("ldpc_round_iterations", int, ldpc.DEFAULT_ROUND_ITERATIONS,
              doc="blind LDPC: iterations per attempt while values are left to reveal", low=1),
        Param("ldpc_round_stall", int, ldpc.DEFAULT_ROUND_STALL,
              doc="blind LDPC: such an attempt stops after this many iterations without progress (0: never)",
              low=0),
    )
    inputs = sync_ports_in() + (Message("key", kind="distill.key", optional=False, doc="from estimate_du"),
                                Message("peer", kind="distill.ec", optional=False, doc="from reconcile_aau"))
    outputs = sync_ports_out() + (Message("key", kind="distill.key", doc="to verify_du"),
                                  Message("peer", kind="distill.ec", doc="to reconcile_aau"))

    def start(self) -> None:
        super().start()
        self._bob_ldpc = None
        if self.method == "ldpc":
            codes = ldpc.load_or_build_codes(self.ldpc_code_bits, self.ldpc_code_seed, family=self.ldpc_family)
            self._bob_ldpc = ldpc.LdpcBob(codes, max_iterations=self.ldpc_max_iterations)
            self._ldpc_frame_bits = ldpc.LdpcAlice(codes, seed=0, delta=ldpc.DEFAULT_DELTA).frame_bits

    def relay_abort(self, msg: dict) -> None:
        # estimate_du has no AAU half: the AAU's copy of the block sits in reconcile_aau.
        if msg.get("stage") == "estimate":
            self._send_raw(envelope("ec", "abort", str(msg["block"]), int(msg["num"]), 0,
                                    reason=str(msg.get("reason", "")), origin="estimate"))
        super().relay_abort(msg)

    def begin(self, blk: KeyBlock) -> None:
        q = float(min(max(blk.info["qber_estimate"], 1e-6), 0.49))
        blk.state["q"] = q
        if self.method == "cascade":
            cs = self.seed      # one public seed per run: the permutations are drawn once (see above)
            bob = cascade.CascadeBob(blk.bits, cs, self.cascade_variant, q)
            blk.state["bob"] = bob
            req = bob.next_request()
            self.send_peer(blk, "start", method="cascade", n=int(blk.bits.size), qber_estimate=q, cascade_seed=cs,
                           request=req.to_bytes() if req is not None else b"")
            if req is None:
                self._done_ec(blk, bob.corrected_key.copy(), bob.leak_bits)
        else:
            self.send_peer(blk, "start", method="ldpc", mode=self.ldpc_mode, n=int(blk.bits.size), qber_estimate=q)

    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        if type_ == "reply" and self.method == "cascade" and "corrected" not in blk.state:
            bob = blk.state["bob"]
            try:
                bob.receive(cascade.ParityReply.from_bytes(msg["reply"]))
            except (ValueError, KeyError) as e:
                raise ProtocolError(f"Cascade reply: {e}") from None
            req = bob.next_request()
            if req is not None:
                self.send_peer(blk, "request", request=req.to_bytes())
            else:
                self._done_ec(blk, bob.corrected_key.copy(), bob.leak_bits)
        elif type_ == "syndromes" and self.method == "ldpc" and "corrected" not in blk.state \
                and "blind" not in blk.state:
            raw = msg.get("frames")
            frames, pads = ldpc_frames(blk.bits, self._ldpc_frame_bits)
            if not isinstance(raw, list) or len(raw) != frames.shape[0]:
                raise ProtocolError(f"expected {frames.shape[0]} LDPC syndromes")
            try:
                sms = [ldpc.SyndromeMessage.from_bytes(r) for r in raw]
            except ValueError as e:
                raise ProtocolError(f"LDPC syndrome: {e}") from None
            if any(sm.blind != (self.ldpc_mode == "blind") for sm in sms):
                raise ProtocolError(f"LDPC syndromes are not all {self.ldpc_mode} frames")
            if self.ldpc_mode == "blind":
                try:
                    blk.state["blind"] = ldpc.BlindDecoder(self._bob_ldpc, list(frames), sms,
                                                           self.ldpc_round_iterations, pads=pads,
                                                           round_stall=self.ldpc_round_stall,
                                                           reveal=self.ldpc_reveal)
                except ValueError as e:
                    raise ProtocolError(f"LDPC syndromes: {e}") from None
                self._blind_round(blk)
                return
            try:
                results = self._bob_ldpc.decode_many(list(frames), sms)
            except ValueError as e:
                raise ProtocolError(f"LDPC syndromes: {e}") from None
            bad = [i for i, r in enumerate(results) if not r.converged]
            if bad:
                self.abort(blk, f"LDPC frame {bad[0] + 1} of {len(raw)} did not converge "
                                f"(QBER estimate {100 * blk.state['q']:.2f} %)")
                return
            corrected = np.concatenate([r.corrected for r in results])[:blk.bits.size].astype(np.uint8)
            self._done_ec(blk, corrected, sum(r.leak_bits for r in results))
        elif type_ == "reveals" and "blind" in blk.state and "corrected" not in blk.state:
            dec = blk.state["blind"]
            raw = msg.get("frames")
            if not isinstance(raw, list) or len(raw) != len(dec.pending):
                raise ProtocolError(f"expected {len(dec.pending)} LDPC reveals")
            try:
                dec.add_reveals([ldpc.RevealMessage.from_bytes(r) for r in raw])
            except ValueError as e:
                raise ProtocolError(f"LDPC reveal: {e}") from None
            self._blind_round(blk)
        elif type_ == "done_ok" and "corrected" in blk.state:
            self.complete(blk, blk.state["corrected"])
        else:
            raise ProtocolError(f"unexpected {type_!r} in stage ec")

    def _blind_round(self, blk: KeyBlock) -> None:
        """Decode every frame still failing; finish, ask the AAU for more values, or abort."""
        dec = blk.state["blind"]
        failing = dec.decode()
        if dec.failed:
            self.abort(blk, f"LDPC frame {dec.failed[0] + 1} of {len(dec.msgs)} did not converge with every "
                            f"punctured value and extension bit revealed (QBER estimate {100 * blk.state['q']:.2f} %)")
            return
        if not failing:
            corrected = np.concatenate([r.corrected for r in dec.results])[:blk.bits.size].astype(np.uint8)
            blk.info.update(ldpc_rounds=dec.rounds, ldpc_attempts=dec.attempts, ldpc_iterations=dec.iterations,
                            ldpc_revealed_bits=sum(dec.revealed))
            self._done_ec(blk, corrected, dec.leak_bits)
            return
        if dec.reveal == "reliability":
            self.send_peer(blk, "reveal_request", frames=[int(i) for i in failing],
                           positions=[None if dec.requests[i] is None else ldpc.encode_positions(dec.requests[i])
                                      for i in failing])
        else:
            self.send_peer(blk, "reveal_request", frames=[int(i) for i in failing])

    def on_abort(self, blk: KeyBlock) -> None:
        blk.state.pop("blind", None)

    def _done_ec(self, blk: KeyBlock, corrected: np.ndarray, leak: int) -> None:
        errors = int(np.count_nonzero(corrected != blk.bits))
        n = int(blk.bits.size)
        q_key = errors / n
        blk.state["corrected"] = corrected
        blk.state.pop("bob", None)
        blk.state.pop("blind", None)
        h = binary_entropy(q_key)
        blk.info.update(leak_ec=int(leak), errors_corrected=errors, qber_key=q_key, ec_method=self.method,
                        ec_efficiency=(leak / (n * h)) if h > 0 else None)
        self.send_peer(blk, "done", leak_bits=int(leak), errors_corrected=errors)
