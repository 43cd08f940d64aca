"""Wegman–Carter authentication of the classical channel: every message on an inter-node message edge.

Every message on a message edge between two nodes whose ``nodes:`` entries name a ``psk_file`` carries one extra
ZeroMQ part, its tag: ``entry key (8 bytes) | pad offset (4 bytes, big-endian) | tag value (8 bytes)``. The value
is ``h_k(seq || edge label || header || payload parts) + r  (mod 2^61 - 1)``: ``h`` the polynomial hash of
``qkdflow.distill.verify`` (eps-almost-Delta-universal), ``k`` the direction's hash key, ``r`` a one-time pad at
the named position of the node's key material (Wegman & Carter, JCSS 22, 265 (1981); the scheme and its bound
are in ``qkdflow.distill.auth``). The edge label is hashed so a message cannot be moved to another edge; the
sequence number (inside the header) so it cannot be replayed or reordered on its edge.

Key material and restarts: ``qkdflow.distill.authstate.AuthState`` -- a per-node persistent state (node field
``auth_state``; default ``.qkdflow/<flowgraph>.<node>.auth.sqlite`` beside the flowgraph) that starts from the
pre-shared key file and grows with the reserved head of every committed key block
(``Block.replenish_authentication`` / ``authorize_authentication``, called by the key-store halves). Pads are
addressed by position and never reused, also across a node's kill and restart. ``auth_state: ":memory:"`` is a
volatile state for throw-away demos: it restarts from the pre-shared key every run (pads reused across runs).

A message that fails verification is not delivered: the run stops with a message naming the edge, and nothing
half-written remains in the key stores (their two-phase commit). A sender whose pads are spent waits up to
``POOL_WAIT_S`` for replenishment, then fails with a clear message.

Deferred tags (transcript authentication). A block may send a message with ``"_auth": "defer"`` in it (stripped
before it goes on the wire): it then carries the one-byte mark ``DEFER_MARK`` instead of a tag, costs no pad, and is
delivered to the receiving block with ``"_auth": "deferred"`` -- not yet authenticated -- and only into a block
that declares which of its message types may come so (``peer_deferred_types``; into any other block a message
without its tag is an authentication failure). The edge's next tagged
message authenticates, with one tag, the whole transcript since the previous tag: the words
``TRANSCRIPT_WORD, (length_i, words_i of message i)..., count`` over every deferred message and itself, in sequence
order (a single message with nothing deferred before it hashes exactly as above), evaluated incrementally by
Horner's rule as the messages pass, so a transcript costs no memory. A forged, altered, dropped,
inserted or reordered deferred message makes that tag fail: the run stops as for any failed tag. The polynomial
hash's collision bound grows with the transcript's length L in 61-bit words: eps <= L / (2^61 - 1) per tag (about
4e-14 for a 10^6-bit block's Cascade transcript, 8.5e4 words). So one tag per direction can cover a whole
interactive exchange (AIT's qkd-auth does this per key block: Mink et al. / the AIT R10 docs, and
``../shared/reference/postprocessing.md``), provided the receiving block lets nothing it derived from deferred
messages leave before a tagged message closes them: ``qkdflow.distill.protocol`` halves declare which message types
may be deferred (``deferred_types``); every other type must arrive tagged, or the run stops.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

# qkdflow.distill.{auth,authstate,verify} (and sqlite3) load in NodeAuth, in the node's main thread, and only for a
# node with authenticated edges: ~17 ms of start-up saved for every other node process

POOL_WAIT_S = 30.0
#: The tag part of a message whose authentication is deferred to the edge's next tagged message.
DEFER_MARK = b"D"
#: First word of a transcript of several messages (above any sequence number a message starts with, below 2^61 - 1).
TRANSCRIPT_WORD = (1 << 60) + 0x7153
#: How long a receiver waits for key material a tag names but this end does not hold yet.
ENTRY_WAIT_S = 5.0
TAG_BYTES = 8 + 4 + 8


class AuthFailure(Exception):
    """A message on an authenticated edge did not verify."""


def _words(seq: int, label: bytes, parts: list) -> np.ndarray:
    """A message's hash words: seq, the 56-bit words of label + parts, their bit length (numpy path)."""
    from qkdflow.distill.verify import bytes_to_words
    body = bytes_to_words(label + b"".join(bytes(p) for p in parts))
    words = np.empty(body.size + 1, dtype=np.uint64)
    words[0] = np.uint64(seq)
    words[1:] = body
    return words


class EdgeAuth:
    """The tagger (sender side) or verifier (receiver side) of one authenticated edge."""

    def __init__(self, state, sender: bool, direction: str, label: str, stop: threading.Event) -> None:
        from qkdflow.distill.auth import _PolyKey
        self.state, self.sender, self.direction = state, sender, direction
        self.label, self.stop = label, stop
        self._label = label.encode() + b"\0"
        from qkdflow.distill.verify import P61, _poly61
        self._hash = _PolyKey(np.array([state.hash_keys[direction]], dtype=np.uint64))   # numpy path
        self._r, self._p, self._c = int(state.hash_keys[direction]), P61, _poly61
        self.tags = 0
        self.deferred = 0
        self.accept_deferred = False   # receiver: set by the edge's receiving end (its block takes deferred messages)
        # the deferred messages since the last tag: how many, and the hash of their transcript so far (None: none)
        self._n_pending = 0
        self._acc: int | None = None
        self.lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Deferred messages received (or sent) since the edge's last tag: not authenticated yet."""
        return self._n_pending

    def _step(self, acc: int, word: int) -> int:
        """One Horner step: hash(prefix + [word]) from hash(prefix)."""
        return (acc + word) * self._r % self._p

    def _feed(self, acc: int, seq: int, parts: list, nbytes: int) -> int:
        """Horner's rule from acc over one message's words (``_words``: seq, the 56-bit words of label + parts,
        their bit length; nbytes = the label's and parts' bytes); with the C extension straight from the buffers,
        without building the words."""
        if self._c is None:
            words = _words(seq, self._label, parts)
            return (acc * pow(self._r, int(words.size), self._p) + self._hash.hash(words)[0]) % self._p
        acc = self._c.horner_bytes56(self._step(acc, seq), self._r, [self._label, *parts])
        return self._step(acc, 8 * nbytes)

    def _nbytes(self, parts: list) -> int:
        return len(self._label) + sum(memoryview(p).nbytes for p in parts)

    def _transcript_feed(self, acc: int, seq: int, parts: list) -> int:
        """One more message of a transcript: its word count, then its words."""
        nbytes = self._nbytes(parts)
        n_words = 2 + -(-8 * nbytes // 56)                 # seq, the 56-bit words, the length word
        return self._feed(self._step(acc, n_words), seq, parts, nbytes)

    def _defer(self, seq: int, parts: list) -> None:
        acc = self._acc if self._acc is not None else self._step(0, TRANSCRIPT_WORD)
        self._acc = self._transcript_feed(acc, seq, parts)
        self._n_pending += 1
        self.deferred += 1

    def _digest(self, seq: int, parts: list) -> int:
        """The hash one tag covers: this message's words, or the transcript of the deferred ones and this one."""
        if self._acc is None:
            return self._feed(0, seq, parts, self._nbytes(parts))
        return self._step(self._transcript_feed(self._acc, seq, parts), self._n_pending + 1)

    def _value(self, seq: int, parts: list, pad: int) -> bytes:
        return ((self._digest(seq, parts) + pad) % self._p).to_bytes(8, "big")

    def tag(self, parts: list, seq: int, defer: bool = False) -> bytes:
        from qkdflow.distill.auth import KeyPoolExhausted
        if defer:
            with self.lock:
                self._defer(seq, parts)
            return DEFER_MARK
        deadline = time.monotonic() + POOL_WAIT_S
        while True:
            try:
                key, off, pad = self.state.take_pad(self.direction)
                break
            except KeyPoolExhausted:
                if self.stop.is_set():
                    from .transport import Stopped
                    raise Stopped from None
                if time.monotonic() > deadline:
                    raise KeyPoolExhausted(
                        f"edge {self.label}: authentication key exhausted for {POOL_WAIT_S:g} s; replenish it "
                        "from new key (a larger psk_file or a larger auth_reserve_bits per key block)") from None
                time.sleep(0.01)
        with self.lock:
            self.tags += 1
            value = self._value(seq, parts, pad)
            self._acc, self._n_pending = None, 0
            return key + off.to_bytes(4, "big") + value

    def verify(self, parts: list, seq: int, tag: bytes) -> bool:
        """Check a message's tag; True if it is authenticated now (with every deferred message before it), False
        for a deferred message (``DEFER_MARK``: to be covered by the edge's next tag). Raises AuthFailure."""
        if tag == DEFER_MARK:
            if not self.accept_deferred:
                raise AuthFailure(f"edge {self.label}: authentication failed (a message without its tag, into a block "
                                  "that takes none); the message was not delivered and the run stops")
            with self.lock:
                self._defer(seq, parts)
            return False
        if len(tag) != TAG_BYTES:
            raise AuthFailure(f"edge {self.label}: authentication failed (tag of {len(tag)} bytes, expected "
                              f"{TAG_BYTES}); the message was not delivered and the run stops")
        key, off = tag[:8], int.from_bytes(tag[8:12], "big")
        deadline = time.monotonic() + ENTRY_WAIT_S
        while True:
            try:
                pad, end = self.state.pad_at(self.direction, key, off, self.label)
                break
            except LookupError as e:
                # key material named by an authentic tag may be appended here a moment later (replenishment
                # runs in another block); anything else fails once the wait is over
                if self.stop.is_set() or time.monotonic() > deadline or "replay" in str(e) \
                        or key in self.state.by_key:
                    raise AuthFailure(f"edge {self.label}: authentication failed ({e}); the message was not "
                                      "delivered and the run stops") from None
                time.sleep(0.01)
        import hmac  # here: _hashlib costs ~7 ms of every node's start-up, authenticated or not

        covered = self._n_pending
        if not hmac.compare_digest(self._value(seq, parts, pad), tag[12:]):
            what = f" or one of the {covered} deferred messages before it" if covered else ""
            raise AuthFailure(f"edge {self.label}: authentication failed (tag mismatch: forged, altered or "
                              f"replayed message{what}); the message was not delivered and the run stops")
        self.state.accept(self.label, end)
        with self.lock:
            self.tags += 1
            self._acc, self._n_pending = None, 0
        return True


def unauthenticated_note(receivers) -> str:
    """For a block that failed on its input: a note naming its edges that hold deferred messages not yet
    authenticated -- an inconsistency found in them may be tampering on the wire, not a fault of the peer."""
    held = [(r.auth.label, r.auth.pending) for r in receivers
            if getattr(r, "auth", None) is not None and r.auth.pending]
    return "".join(f" (edge {label}: {n} deferred message(s) delivered and not yet authenticated: altered in transit "
                   "or a faulty peer)" for label, n in held)


class NodeAuth:
    """All authenticated edges touching one node, sharing the node's persistent key material."""

    def __init__(self, graph, node: str, stop: threading.Event) -> None:
        self.edges = authenticated_edges(graph)
        self.node = node
        self.by_edge: dict[int, EdgeAuth] = {}
        self.state = None  # qkdflow.distill.authstate.AuthState
        mine = [e for e in self.edges if node in (graph.blocks[e.src].node, graph.blocks[e.dst].node)]
        if not mine:
            return
        from qkdflow.distill.auth import ALICE_TO_BOB, BOB_TO_ALICE, KeyPoolError
        from qkdflow.distill.authstate import AuthState
        from qkdflow.distill.verify import P61, bytes_to_words  # noqa: F401  (used by EdgeAuth in block threads)

        spec = graph.nodes[node]
        try:
            with open(spec.psk_file, "rb") as f:
                psk = f.read()
        except OSError as e:
            raise ValueError(f"nodes.{node}.psk_file: pre-shared key file {spec.psk_file!r}: "
                             f"{e.strerror or e}") from None
        path = spec.auth_state or default_state_path(graph, node)
        try:
            self.state = AuthState(path, psk, f"pre-shared key file {spec.psk_file!r}")
        except KeyPoolError as e:
            field = "psk_file" if "pre-shared key file" in str(e) else "auth_state"
            raise ValueError(f"nodes.{node}.{field}: {e}") from None
        peers = sorted(({graph.blocks[e.src].node, graph.blocks[e.dst].node} - {node}).pop() for e in mine)
        if len(set(peers)) > 1:
            raise ValueError(f"nodes.{node}.psk_file: authenticated message edges to {len(set(peers))} nodes "
                             f"({', '.join(sorted(set(peers)))}); one authenticated peer per node is supported")
        alice = _alice(node, peers[0])
        for e in mine:
            src_node = graph.blocks[e.src].node
            direction = ALICE_TO_BOB if src_node == alice else BOB_TO_ALICE
            self.by_edge[e.index] = EdgeAuth(self.state, src_node == node, direction, e.label, stop)

    def replenish(self, key_bits: np.ndarray, entry_id: str | None = None, send: bool = True) -> None:
        if self.state is not None and np.asarray(key_bits).size:
            self.state.add(np.asarray(key_bits, dtype=np.uint8), entry_id, send)

    def authorize(self, entry_id: str) -> None:
        if self.state is not None:
            self.state.authorize(entry_id)

    def close(self) -> None:
        if self.state is not None:
            self.state.close()


def _alice(a: str, b: str) -> str:
    """Which of two nodes sends alice->bob: the one named aau/alice, else the first by name (same at both ends)."""
    named = [n for n in (a, b) if n.lower() in ("aau", "alice")]
    return named[0] if len(named) == 1 else min(a, b)


def default_state_path(graph, node: str) -> str:
    """``.qkdflow/<flowgraph>.<node>.auth.sqlite`` beside the flowgraph file."""
    base = os.path.dirname(os.path.abspath(graph.path)) if getattr(graph, "path", None) else os.getcwd()
    return os.path.join(base, ".qkdflow", f"{graph.name}.{node}.auth.sqlite")


def authenticated_edges(graph) -> list:
    """Message edges between two nodes that both name a psk_file, in flowgraph order."""
    out = []
    for e in graph.edges:
        sn, dn = graph.blocks[e.src].node, graph.blocks[e.dst].node
        if e.kind == "message" and sn != dn and graph.nodes[sn].psk_file and graph.nodes[dn].psk_file:
            out.append(e)
    return out


__all__ = ["AuthFailure", "DEFER_MARK", "EdgeAuth", "NodeAuth", "authenticated_edges", "default_state_path",
           "POOL_WAIT_S"]
