"""Flowgraph YAML: load, substitute variables, apply overrides, validate everything up front.

.. code-block:: yaml

    flowgraph: fronthaul-20km           # name
    clock: {rate_hz: 1.0e9}             # injected into blocks that declare rate_hz
    variables: {L: 20}                  # ${L} anywhere in a block's parameters
    nodes:                              # one OS process each
      aau: {host: 127.0.0.1, port: 5600}
      du:  {host: 127.0.0.1, port: 5700}
    blocks:
      prep:  {type: preparation, node: aau, seed: 7}
      fibre: {type: fibre, node: aau, length_km: ${L}}
      mine:  {type: mypackage.module:MyBlock, node: du}    # a user's block, no registration
    connections:
      - [prep.out, laser.in]
      - [fibre.out, demux.in, {queue_frames: 8}]            # edge options

Edges between nodes meet at the receiving node: ``tcp://host:port+k`` (k counts that node's
incoming inter-node edges in file order), ``ipc://ipc_dir/<flowgraph>-<node>-k`` with
``transport: ipc``, or an explicit ``endpoint`` edge option. Every problem found is reported,
all at once, as ``file:line: field: reason``.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from .block import Block, Message, Stream
from .params import ParamError

TOP_KEYS = {"flowgraph", "clock", "variables", "nodes", "blocks", "connections", "description", "options"}
NODE_KEYS = {"host", "bind_host", "port", "transport", "ipc_dir", "psk_file", "auth_state", "curve_keys", "scheduler",
             "peer_timeout_s"}
EDGE_KEYS = {"endpoint", "queue_frames"}
DEFAULT_QUEUE_FRAMES = 4
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class FlowgraphError(Exception):
    """One or more user errors in a flowgraph; ``errors`` holds one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# ---- YAML with line numbers and duplicate-key detection ------------------------------------
class _Map(dict):
    line: int = 0
    key_lines: dict


class _Seq(list):
    line: int = 0


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    m = _Map()
    m.line = node.start_mark.line + 1
    m.key_lines = {}
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        if key in m:
            loader.duplicates.append((knode.start_mark.line + 1, key))
        m[key] = loader.construct_object(vnode, deep=True)
        m.key_lines[key] = knode.start_mark.line + 1
    return m


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    s = _Seq(loader.construct_object(v, deep=True) for v in node.value)
    s.line = node.start_mark.line + 1
    return s


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)
# YAML 1.1 reads 1e-6 (no dot) as a string; read it as a float like YAML 1.2 does.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _line(obj: Any, key: Any = None, default: int = 0) -> int:
    if key is not None and isinstance(obj, _Map):
        return obj.key_lines.get(key, obj.line)
    return getattr(obj, "line", default)


# ---- the graph model ----------------------------------------------------------------------
@dataclass
class NodeSpec:
    name: str
    host: str = "127.0.0.1"
    bind_host: str | None = None
    port: int | None = None
    transport: str = "tcp"
    ipc_dir: str = "/tmp"
    psk_file: str | None = None  # pre-shared key: authenticates message edges to other nodes with one
    auth_state: str | None = None  # where used one-time-pad positions persist (runtime.auth); default beside flowgraph
    curve_keys: str | None = None  # ZeroMQ CURVE certificates (tools/make_curve_keys.py): encrypts inter-node edges
    scheduler: str = "threads"  # threads: one per block; single: every block stepped by one thread (runtime.loop)
    peer_timeout_s: float = 120.0  # longest wait for a peer's answer (Block.awaiting_peer) before the run stops


@dataclass
class BlockSpec:
    name: str
    type: str
    cls: type[Block]
    params: dict
    node: str
    line: int


@dataclass
class Edge:
    index: int
    src: str
    src_port: str
    dst: str
    dst_port: str
    kind: str  # "stream" | "message"
    dtype: np.dtype | None
    queue_frames: int = DEFAULT_QUEUE_FRAMES
    address: str = ""     # where the receiver binds (inproc/ipc/tcp)
    connect: str = ""     # where the sender connects
    line: int = 0

    @property
    def label(self) -> str:
        return f"{self.src}.{self.src_port} -> {self.dst}.{self.dst_port}"


@dataclass
class Graph:
    name: str
    path: str
    nodes: dict[str, NodeSpec]
    blocks: dict[str, BlockSpec]
    edges: list[Edge]
    variables: dict = field(default_factory=dict)
    clock: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    def instantiate(self, name: str) -> Block:
        spec = self.blocks[name]
        blk = spec.cls(name, **spec.params)
        blk.node = spec.node
        blk.graph = self  # blocks that need the whole flowgraph (monitors, closed-form twins) read it
        return blk

    def blocks_of(self, node: str) -> list[str]:
        return [b for b, s in self.blocks.items() if s.node == node]


# ---- block type lookup ----------------------------------------------------------------------
def resolve_block_type(type_name: str) -> type[Block]:
    """``fibre`` -> the Block class in ``blocks/fibre.py``; ``pkg.mod:Class`` -> that class."""
    if ":" in type_name:
        mod_name, _, cls_name = type_name.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise LookupError(f"cannot import module {mod_name!r}: {e}") from None
        cls = getattr(mod, cls_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, Block)):
            raise LookupError(f"{mod_name!r} has no Block class {cls_name!r}")
        return cls
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", type_name) or type_name not in builtin_block_names():
        raise LookupError(f"unknown block type {type_name!r} (see `qkdflow blocks`; a user block is module:Class)")
    mod = importlib.import_module(f"blocks.{type_name}")
    return _block_class_of(mod)


def _block_class_of(mod: Any) -> type[Block]:
    found = [c for c in vars(mod).values()
             if inspect.isclass(c) and issubclass(c, Block) and c is not Block and c.__module__ == mod.__name__]
    if len(found) != 1:  # pragma: no cover - a packaging error, caught by the test of `qkdflow blocks`
        raise LookupError(f"module {mod.__name__} must define exactly one Block, found {len(found)}")
    return found[0]


def builtin_block_names() -> list[str]:
    import blocks as pkg
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def builtin_blocks() -> dict[str, type[Block]]:
    return {n: _block_class_of(importlib.import_module(f"blocks.{n}")) for n in builtin_block_names()}


# ---- loading ----------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``fibre.length_km=40`` -> (["fibre", "length_km"], 40)."""
    key, eq, val = text.partition("=")
    if not eq or not key.strip():
        raise ValueError(f"-p {text!r}: expected NAME=VALUE, e.g. fibre.length_km=40")
    try:
        value = yaml.load(val, Loader=_Loader) if val.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"-p {text!r}: cannot parse value: {e}") from None
    return key.strip().split("."), value


def load_flowgraph(path: str, overrides: list[str] | tuple = ()) -> Graph:
    """Load and validate a flowgraph file; raise FlowgraphError listing every problem."""
    errors: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise FlowgraphError([f"{path}: cannot read: {e.strerror}"]) from None
    loader = _Loader(text)
    loader.duplicates = []
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise FlowgraphError([f"{where}: YAML syntax error: {getattr(e, 'problem', e)}"]) from None
    finally:
        loader.dispose()
    for line, key in loader.duplicates:
        errors.append(f"{path}:{line}: {key}: duplicate name")
    if not isinstance(doc, dict):
        raise FlowgraphError(errors + [f"{path}:1: flowgraph: the file must be a mapping with blocks and connections"])

    def err(obj: Any, key: Any, fieldname: str, reason: str) -> None:
        errors.append(f"{path}:{_line(obj, key)}: {fieldname}: {reason}")

    for k in doc:
        if k not in TOP_KEYS:
            err(doc, k, str(k), f"unknown top-level key (allowed: {', '.join(sorted(TOP_KEYS))})")

    variables = doc.get("variables") or _Map()
    if not isinstance(variables, dict):
        err(doc, "variables", "variables", "must be a mapping")
        variables = _Map()
    blocks_doc = doc.get("blocks")
    if not isinstance(blocks_doc, dict) or not blocks_doc:
        err(doc, "blocks", "blocks", "must be a non-empty mapping of block name -> {type, ...}")
        blocks_doc = _Map()
    nodes_doc = doc.get("nodes") or _Map()
    if not isinstance(nodes_doc, dict):
        err(doc, "nodes", "nodes", "must be a mapping of node name -> {host, port, ...}")
        nodes_doc = _Map()

    # -p overrides: variables first (they feed substitution), then block parameters and nodes.
    for ov in overrides:
        try:
            keys, value = parse_override(ov)
        except ValueError as e:
            errors.append(str(e))
            continue
        if keys[0] == "variables" and len(keys) == 2:
            variables[keys[1]] = value
        elif len(keys) == 1 and keys[0] in variables:
            variables[keys[0]] = value
        elif keys[0] == "nodes" and len(keys) == 3 and isinstance(nodes_doc.get(keys[1]), dict):
            nodes_doc[keys[1]][keys[2]] = value
        elif keys[0] == "clock" and len(keys) == 2:
            doc.setdefault("clock", _Map())[keys[1]] = value
        elif len(keys) == 2 and isinstance(blocks_doc.get(keys[0]), dict):
            blocks_doc[keys[0]][keys[1]] = value
        elif len(keys) == 3 and isinstance(blocks_doc.get(keys[0]), dict) and isinstance(blocks_doc[keys[0]].get(keys[1]), dict):
            blocks_doc[keys[0]][keys[1]][keys[2]] = value
        else:
            errors.append(f"-p {ov}: no such block, variable or node field")

    def subst(v: Any, where: str, obj: Any, key: Any) -> Any:
        if isinstance(v, str):
            m = VAR_RE.fullmatch(v.strip())
            if m:
                if m.group(1) not in variables:
                    err(obj, key, where, f"undefined variable ${{{m.group(1)}}}")
                    return v
                return variables[m.group(1)]
            def rep(mm: re.Match) -> str:
                if mm.group(1) not in variables:
                    err(obj, key, where, f"undefined variable ${{{mm.group(1)}}}")
                    return mm.group(0)
                return str(variables[mm.group(1)])
            return VAR_RE.sub(rep, v)
        if isinstance(v, dict):
            out = _Map({k: subst(x, f"{where}.{k}", v, k) for k, x in v.items()})
            out.line, out.key_lines = getattr(v, "line", 0), getattr(v, "key_lines", {})
            return out
        if isinstance(v, list):
            return [subst(x, where, obj, key) for x in v]
        return v

    clock = doc.get("clock") or {}
    if not isinstance(clock, dict):
        err(doc, "clock", "clock", "must be a mapping like {rate_hz: 1.0e9}")
        clock = {}
    clock = subst(clock, "clock", doc, "clock")
    if "rate_hz" in clock and (isinstance(clock["rate_hz"], bool) or not isinstance(clock["rate_hz"], (int, float))
                               or clock["rate_hz"] <= 0):
        err(clock, "rate_hz", "clock.rate_hz", f"must be a positive number, got {clock['rate_hz']!r}")

    # nodes
    nodes: dict[str, NodeSpec] = {}
    for nname, nd in nodes_doc.items():
        nd = nd if nd is not None else _Map()
        if not isinstance(nd, dict):
            err(nodes_doc, nname, f"nodes.{nname}", "must be a mapping")
            continue
        nd = subst(nd, f"nodes.{nname}", nodes_doc, nname)
        for k in nd:
            if k not in NODE_KEYS:
                err(nd, k, f"nodes.{nname}.{k}", f"unknown field (allowed: {', '.join(sorted(NODE_KEYS))})")
        spec = NodeSpec(str(nname))
        for k in ("host", "bind_host", "ipc_dir", "transport", "psk_file", "auth_state", "curve_keys", "scheduler"):
            if k in nd:
                if not isinstance(nd[k], str):
                    err(nd, k, f"nodes.{nname}.{k}", f"must be a string, got {nd[k]!r}")
                else:
                    setattr(spec, k, nd[k])
        for k in ("psk_file", "auth_state", "curve_keys"):  # node files resolve beside the flowgraph
            v = getattr(spec, k)
            if v and v != ":memory:" and not os.path.isabs(v):
                setattr(spec, k, os.path.join(os.path.dirname(os.path.abspath(path)), v))
        if spec.scheduler not in ("threads", "single"):
            err(nd, "scheduler", f"nodes.{nname}.scheduler", f"must be threads or single, got {spec.scheduler!r}")
        if "peer_timeout_s" in nd:
            t = nd["peer_timeout_s"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
                err(nd, "peer_timeout_s", f"nodes.{nname}.peer_timeout_s",
                    f"must be a positive number of seconds, got {t!r}")
            else:
                spec.peer_timeout_s = float(t)
        if spec.transport not in ("tcp", "ipc"):
            err(nd, "transport", f"nodes.{nname}.transport", f"must be tcp or ipc, got {spec.transport!r}")
        if "port" in nd:
            p = nd["port"]
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
                err(nd, "port", f"nodes.{nname}.port", f"must be a TCP port 1..65535, got {p!r}")
            else:
                spec.port = p
        nodes[str(nname)] = spec
    implicit_node = not nodes
    if implicit_node:
        nodes["main"] = NodeSpec("main")

    # blocks
    if os.path.dirname(os.path.abspath(path)) not in sys.path:
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # user blocks beside the flowgraph
    blocks: dict[str, BlockSpec] = {}
    for bname, bd in blocks_doc.items():
        where = f"blocks.{bname}"
        if not isinstance(bname, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", bname):
            err(blocks_doc, bname, where, "block names are letters, digits, _ and - (no dots)")
            continue
        if not isinstance(bd, dict):
            err(blocks_doc, bname, where, "must be a mapping with at least a type")
            continue
        bd = subst(bd, where, blocks_doc, bname)
        tname = bd.get("type")
        if not isinstance(tname, str):
            err(bd, "type", f"{where}.type", "missing or not a string")
            continue
        try:
            cls = resolve_block_type(tname)
        except LookupError as e:
            err(bd, "type", f"{where}.type", str(e))
            continue
        node = bd.get("node")
        if node is None:
            if len(nodes) == 1:
                node = next(iter(nodes))
            else:
                err(bd, None, f"{where}.node", f"required: this flowgraph has nodes {', '.join(nodes)}")
                continue
        elif node not in nodes:
            err(bd, "node", f"{where}.node", f"unknown node {node!r} (nodes: {', '.join(nodes)})")
            continue
        params = {k: v for k, v in bd.items() if k not in ("type", "node")}
        declared = {p.name: p for p in cls.params}
        if "rate_hz" in declared and "rate_hz" not in params and "rate_hz" in clock:
            params["rate_hz"] = clock["rate_hz"]
        ok = True
        for k, v in params.items():
            if k not in declared:
                err(bd, k, f"{where}.{k}", f"unknown parameter of {tname} (has: {', '.join(declared) or 'none'})")
                ok = False
                continue
            try:
                params[k] = declared[k].coerce(v)
            except ParamError as e:
                err(bd, k, f"{where}.{k}", str(e))
                ok = False
        for p in cls.params:
            if p.required and p.name not in params:
                err(bd, None, f"{where}.{p.name}", "required parameter missing")
                ok = False
        if not ok:
            continue
        try:
            inst = cls(bname, **params)
            for problem in inst.validate():
                fld, _, reason = problem.partition(": ")
                err(bd, fld if fld in bd else None, f"{where}.{fld}", reason or problem)
        except (ParamError, ValueError) as e:
            err(bd, None, where, str(e))
            continue
        blocks[bname] = BlockSpec(bname, tname, cls, params, str(node), _line(blocks_doc, bname))

    # connections
    conns = doc.get("connections") or _Seq()
    if not isinstance(conns, list):
        err(doc, "connections", "connections", "must be a list of [src.port, dst.port]")
        conns = _Seq()
    edges: list[Edge] = []
    seen_inputs: dict[tuple[str, str], int] = {}
    used_outputs: set[tuple[str, str]] = set()
    for i, c in enumerate(conns):
        where = f"connections[{i}]"
        cline = _line(c, default=_line(conns))
        def cerr(reason: str) -> None:
            errors.append(f"{path}:{cline}: {where}: {reason}")
        if not isinstance(c, list) or len(c) not in (2, 3) or not all(isinstance(x, str) for x in c[:2]):
            cerr("must be [src.port, dst.port] or [src.port, dst.port, {options}]")
            continue
        opts = c[2] if len(c) == 3 else {}
        if not isinstance(opts, dict):
            cerr("edge options must be a mapping")
            continue
        for k in opts:
            if k not in EDGE_KEYS:
                cerr(f"unknown edge option {k!r} (allowed: {', '.join(sorted(EDGE_KEYS))})")
        ends = []
        for j, (ep, direction) in enumerate(((c[0], "out"), (c[1], "in"))):
            b, dot, port = ep.partition(".")
            if not dot:
                cerr(f"{ep!r}: expected block.port")
                ends.append(None)
                continue
            if b not in blocks:
                if b not in blocks_doc:
                    cerr(f"{ep!r}: unknown block {b!r}")
                ends.append(None)
                continue
            p = blocks[b].cls.port(direction, port)
            if p is None:
                names = [x.name for x in (blocks[b].cls.outputs if direction == "out" else blocks[b].cls.inputs)]
                cerr(f"{ep!r}: {blocks[b].type} has no {'output' if direction == 'out' else 'input'} port {port!r}"
                     f" (has: {', '.join(names) or 'none'})")
                ends.append(None)
                continue
            ends.append((b, port, p))
        if None in ends:
            # an edge to a block that failed validation still "connects" its other end: no follow-on errors
            for end, direction, ep in zip(ends, ("out", "in"), c[:2]):
                other = c[1] if direction == "out" else c[0]
                if end is not None and other.partition(".")[0] in blocks_doc and other.partition(".")[0] not in blocks:
                    (used_outputs.add((end[0], end[1])) if direction == "out"
                     else seen_inputs.setdefault((end[0], end[1]), i))
            continue
        (sb, sp, sport), (db, dp, dport) = ends
        if isinstance(sport, Stream) != isinstance(dport, Stream):
            cerr(f"cannot connect a {'stream' if isinstance(sport, Stream) else 'message'} port to a "
                 f"{'stream' if isinstance(dport, Stream) else 'message'} port")
            continue
        dtype = None
        if isinstance(sport, Stream):
            sd, dd = sport.np_dtype, dport.np_dtype
            if sd is not None and dd is not None and sd != dd:
                cerr(f"dtype mismatch: {sb}.{sp} gives {sd} but {db}.{dp} takes {dd}")
                continue
            dtype = sd if sd is not None else dd
            if (db, dp) in seen_inputs:
                cerr(f"{db}.{dp} is already fed by connections[{seen_inputs[(db, dp)]}] (a stream input takes one edge)")
                continue
        else:
            if sport.kind != "any" and dport.kind != "any" and sport.kind != dport.kind:
                cerr(f"message kind mismatch: {sb}.{sp} sends {sport.kind} but {db}.{dp} takes {dport.kind}")
                continue
        seen_inputs.setdefault((db, dp), i)
        used_outputs.add((sb, sp))
        q = opts.get("queue_frames", DEFAULT_QUEUE_FRAMES)
        if isinstance(q, bool) or not isinstance(q, int) or q < 1:
            cerr(f"queue_frames must be a positive integer, got {q!r}")
            continue
        e = Edge(i, sb, sp, db, dp, "stream" if isinstance(sport, Stream) else "message", dtype, q,
                 line=cline)
        if "endpoint" in opts:
            ep = opts["endpoint"]
            if not isinstance(ep, str) or not re.match(r"^(tcp|ipc|inproc)://", ep):
                cerr(f"endpoint must be tcp://host:port, ipc://path or inproc://name, got {ep!r}")
                continue
            e.address = e.connect = ep
        edges.append(e)

    # required ports
    for bname, spec in blocks.items():
        for p in spec.cls.stream_inputs():
            if not p.optional and (bname, p.name) not in seen_inputs:
                errors.append(f"{path}:{spec.line}: blocks.{bname}: required input port {p.name!r} is not connected")
        for p in spec.cls.stream_outputs():
            if not p.optional and (bname, p.name) not in used_outputs:
                errors.append(f"{path}:{spec.line}: blocks.{bname}: output port {p.name!r} is not connected "
                              f"(its frames would be lost; connect it, e.g. to a null_sink)")
        for p in spec.cls.message_inputs():
            if not p.optional and (bname, p.name) not in seen_inputs:
                errors.append(f"{path}:{spec.line}: blocks.{bname}: required message port {p.name!r} is not connected")

    # addresses
    name = str(doc.get("flowgraph", os.path.splitext(os.path.basename(path))[0]))
    incoming: dict[str, int] = {}
    for e in edges:
        sn, dn = blocks[e.src].node, blocks[e.dst].node
        if e.address:
            continue
        if sn == dn:
            e.address = e.connect = f"inproc://{name}-e{e.index}"
            continue
        node = nodes[dn]
        k = incoming.get(dn, 0)
        incoming[dn] = k + 1
        if node.transport == "ipc":
            e.address = e.connect = f"ipc://{node.ipc_dir.rstrip('/')}/qkdflow-{name}-{dn}-{k}"
        elif node.port is None:
            errors.append(f"{path}:{e.line}: connections[{e.index}]: edge {e.label} goes from node {sn} to node {dn} "
                          f"but has no endpoint: give nodes.{dn}.port (or transport: ipc), or an endpoint option")
        elif node.port + k > 65535:
            errors.append(f"{path}:{e.line}: nodes.{dn}.port: port {node.port}+{k} is past 65535")
        else:
            e.address = f"tcp://{node.bind_host or node.host}:{node.port + k}"
            e.connect = f"tcp://{node.host}:{node.port + k}"

    for e in edges:
        sn, dn = blocks[e.src].node, blocks[e.dst].node
        if sn != dn and bool(nodes[sn].curve_keys) != bool(nodes[dn].curve_keys):
            has, lacks = (sn, dn) if nodes[sn].curve_keys else (dn, sn)
            errors.append(f"{path}:{e.line}: nodes.{lacks}.curve_keys: edge {e.label} is CURVE-encrypted at node "
                          f"{has} but node {lacks} has no curve_keys")
        if e.kind == "message" and sn != dn and bool(nodes[sn].psk_file) != bool(nodes[dn].psk_file):
            has, lacks = (sn, dn) if nodes[sn].psk_file else (dn, sn)
            errors.append(f"{path}:{e.line}: nodes.{lacks}.psk_file: message edge {e.label} is authenticated at node "
                          f"{has} (psk_file) but node {lacks} has no psk_file")

    if errors:
        raise FlowgraphError(errors)
    return Graph(name, path, nodes, blocks, edges, dict(variables), dict(clock), doc)
