"""ZeroMQ CURVE encryption and authentication of the edges between nodes (RFC 26 CurveZMQ).

A node with ``curve_keys: DIR`` in the flowgraph's ``nodes:`` section holds, in DIR, its own certificate pair
``<node>.key_secret`` / ``<node>.key`` and the public certificates ``<peer>.key`` of the nodes it talks to
(``tools/make_curve_keys.py DIR aau du`` makes them; give each host only its own secret). On every edge between
two such nodes the receiving node's socket is the CURVE server and the sending node's the client: traffic is
encrypted, and a ZAP authenticator admits only clients whose public key is in DIR. This protects the transport;
the Wegman–Carter tags of ``runtime.auth`` remain the information-theoretic authentication of the QKD protocol.
"""
from __future__ import annotations

import os

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def _cert(path: str, secret: bool) -> tuple[bytes, bytes | None]:
    if not os.path.exists(path):
        raise ValueError(f"curve_keys: missing certificate {path} (make them with tools/make_curve_keys.py)")
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"curve_keys: cannot read certificate {path}: {e}") from None
    if secret and sec is None:
        raise ValueError(f"curve_keys: {path} holds no secret key")
    return public, sec


class NodeCurve:
    """CURVE material of one node: socket options per edge, and the client authenticator."""

    def __init__(self, graph, node: str, ctx: zmq.Context) -> None:
        self.graph, self.node = graph, node
        self.dir = graph.nodes[node].curve_keys
        self.auth: ThreadAuthenticator | None = None
        if not self.dir:
            return
        self.public, self.secret = _cert(os.path.join(self.dir, f"{node}.key_secret"), secret=True)
        peers = {graph.blocks[e.src].node for e in graph.edges if graph.blocks[e.dst].node == node} - {node}
        peers |= {graph.blocks[e.dst].node for e in graph.edges if graph.blocks[e.src].node == node} - {node}
        self.peer_public = {p: _cert(os.path.join(self.dir, f"{p}.key"), secret=False)[0] for p in peers}
        if any(graph.blocks[e.dst].node == node and graph.blocks[e.src].node != node for e in graph.edges):
            self.auth = ThreadAuthenticator(ctx)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=self.dir)

    def server(self, edge) -> tuple | None:
        g = self.graph
        if not self.dir or g.blocks[edge.src].node == self.node:
            return None
        return self.public, self.secret

    def client(self, edge) -> tuple | None:
        g = self.graph
        dst = g.blocks[edge.dst].node
        if not self.dir or dst == self.node:
            return None
        return self.public, self.secret, self.peer_public[dst]

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
