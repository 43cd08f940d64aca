"""The ``qkdflow`` command.

    qkdflow run FLOWGRAPH [-p block.param=value ...] [--node NAME] [--json]
    qkdflow check FLOWGRAPH [-p ...]
    qkdflow blocks
    qkdflow graph FLOWGRAPH -o FILE.png

Exit codes: 0 success, 1 the run failed (a block raised, a node died), 2 a user error in the
flowgraph or the command line (one line each, no traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from .launcher import STATUS, SUMMARY, derive_seeds, restart_number, run_nodes, spawn, supervise, watch_parent

EXTRA_COMMANDS: dict = {}  # name -> (add_arguments(parser), main(args) -> int); filled by other modules


def _err(msg: str) -> None:
    print(f"qkdflow: {msg}", file=sys.stderr, flush=True)


def _load(args: argparse.Namespace):
    # imported here: the parent of a whole run never loads numpy, so it does not compete with its children
    from .graph import FlowgraphError, load_flowgraph

    try:
        return load_flowgraph(args.flowgraph, args.param or [])
    except FlowgraphError as e:
        if getattr(args, "child", False):  # the parent loaded the same file and reports every error once
            return None
        for line in e.errors:
            print(line, file=sys.stderr)
        print(f"qkdflow: {len(e.errors)} error(s) in {args.flowgraph}", file=sys.stderr)
        return None


class Progress:
    """One status line on a terminal (frames, slots, throughput); silent in pipes."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, nodes: dict) -> None:
        if not self.enabled or time.monotonic() - self.last < 0.5:
            return
        self.last = time.monotonic()
        frames = sum(b.get("frames_out", 0) for n in nodes.values() for b in (n or {}).values())
        slots = max((b.get("slots", 0) for n in nodes.values() for b in (n or {}).values()), default=0)
        dt = max(time.monotonic() - self.t0, 1e-9)
        sys.stderr.write(f"\r{dt:7.1f} s  {frames:>10d} frames  {slots:>14.4g} slots  {slots / dt:10.3g} slots/s ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\n")


def _quick(path: str) -> tuple[str, list[str]] | None:
    """(flowgraph name, node names) from a plain YAML read, no validation; None if that read fails."""
    try:
        import yaml

        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        nodes = doc.get("nodes") if isinstance(doc, dict) else None
        if not isinstance(nodes, dict):
            return None
        return str(doc.get("flowgraph", os.path.splitext(os.path.basename(path))[0])), [str(n) for n in nodes]
    except Exception:  # any problem is reported by the full load
        return None


def _run_all(args: argparse.Namespace, name: str, nodes: list[str]) -> int:
    """Every node in its own process, started at once: each child loads and validates the flowgraph itself, so
    the parent (the supervisor) stays light and its start-up does not delay theirs. If the children find user
    errors (exit code 2, silent), the parent loads the flowgraph to report every error once."""
    progress = Progress(sys.stderr.isatty() and not args.quiet)
    t0 = time.perf_counter()
    children = spawn(args.flowgraph, nodes, args.param or [], ["--quiet"] if args.quiet else [])
    ok, summaries, failures = run_nodes(args.flowgraph, nodes, args.param or [], progress, args.timeout,
                                        children=children)
    progress.done()
    if any(c.proc.returncode == 2 for c in children):
        if _load(args) is None:
            return 2
    wall = time.perf_counter() - t0
    for f in failures:
        _err(f"{name}: {f}; run stopped")
    if args.json:
        print(json.dumps({"flowgraph": name, "ok": ok, "wall_s": round(wall, 3), "nodes": summaries}, default=str))
    return 0 if ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    if not args.child and not args.node and not args.restart:
        quick = _quick(args.flowgraph)
        if quick is not None and len(quick[1]) > 1:
            return _run_all(args, *quick)
    graph = _load(args)
    if graph is None:
        return 2
    if args.node is not None and args.node not in graph.nodes:
        _err(f"{args.flowgraph}: no node {args.node!r} (nodes: {', '.join(graph.nodes)})")
        return 2
    if args.child:
        watch_parent()
    nodes = [args.node] if args.node else list(graph.nodes)
    if args.restart and not args.node:
        _err("--restart needs --node: each host supervises its own node")
        return 2
    if len(nodes) == 1 and not args.restart:
        return _run_one(graph, nodes[0], args)
    progress = Progress(sys.stderr.isatty() and not args.quiet)
    t0 = time.perf_counter()
    extra = ["--quiet"] if args.quiet else []
    if args.restart:
        ok, summaries, failures = supervise(args.flowgraph, args.node, args.param or [], args.restart,
                                            args.restart_delay, progress, args.timeout, extra)
    else:
        ok, summaries, failures = run_nodes(args.flowgraph, nodes, args.param or [], progress, args.timeout, extra)
    progress.done()
    wall = time.perf_counter() - t0
    for f in failures:
        _err(f"{graph.name}: {f}; run stopped")
    if args.json:
        print(json.dumps({"flowgraph": graph.name, "ok": ok, "wall_s": round(wall, 3),
                          "nodes": summaries}, default=str))
    return 0 if ok else 1


def _run_one(graph, node: str, args: argparse.Namespace) -> int:
    from .scheduler import NodeRunner

    restart = restart_number()
    if args.child and restart:
        changed = derive_seeds(graph, restart, node)
        if changed:
            print(f"[{node}:supervisor] restart {restart}: seeds of {', '.join(changed)} derived from (seed, {restart})",
                  file=sys.stderr, flush=True)
    if args.child:
        status = lambda s: print(STATUS + json.dumps(s, default=str), flush=True)  # noqa: E731
        signal.signal(signal.SIGTERM, lambda *_: runner.fail(_stopped(node)))
        progress = None
    else:
        progress = Progress(sys.stderr.isatty() and not args.quiet)
        status = lambda s: progress({node: s})  # noqa: E731
    runner = NodeRunner(graph, node, status=status)
    if not args.child:
        signal.signal(signal.SIGTERM, lambda *_: runner.fail(_stopped(node)))
    result = runner.run(timeout_s=args.timeout)
    if progress is not None:
        progress.done()
    if not result.ok:
        f = result.failure
        where = f"node {f.node}, block {f.block}" if f.block != "-" else f"node {f.node}"
        _err(f"{graph.name}: {where}: {f.reason}")
        if args.verbose and f.detail:
            print(f.detail, file=sys.stderr)
    if args.child:
        print(SUMMARY + json.dumps(result.blocks, default=str), flush=True)
    elif args.json:
        print(json.dumps({"flowgraph": graph.name, "ok": result.ok, "wall_s": round(result.wall_s, 3),
                          "nodes": {node: result.blocks}}, default=str))
    return 0 if result.ok else 1


def _stopped(node: str):
    from .scheduler import NodeFailure

    return NodeFailure(node, "-", "stopped by signal")


def cmd_check(args: argparse.Namespace) -> int:
    graph = _load(args)
    if graph is None:
        return 2
    inter = sum(1 for e in graph.edges if graph.blocks[e.src].node != graph.blocks[e.dst].node)
    print(f"{args.flowgraph}: ok — {len(graph.blocks)} blocks, {len(graph.edges)} edges "
          f"({inter} between nodes), nodes: {', '.join(graph.nodes)}")
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    from .graph import builtin_blocks

    for name, cls in builtin_blocks().items():
        print(f"{name} [{cls.category}] — {cls.doc_line()}")
        for p in cls.inputs:
            print(f"    in   {p.describe()}")
        for p in cls.outputs:
            print(f"    out  {p.describe()}")
        for p in cls.params:
            print(f"    param {p.describe()}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    graph = _load(args)
    if graph is None:
        return 2
    from .drawing import draw_graph

    try:
        draw_graph(graph, args.output)
    except OSError as e:
        _err(f"{args.output}: cannot write: {e.strerror}")
        return 2
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qkdflow", description="Streaming decoy-state BB84 QKD blocks for 5G fronthaul.")
    sub = ap.add_subparsers(dest="command", required=True)

    def fg(p: argparse.ArgumentParser) -> None:
        p.add_argument("flowgraph", help="flowgraph YAML file")
        p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                       help="override a block parameter (block.param=value), variable or node field; repeatable")

    p = sub.add_parser("run", help="run a flowgraph (every node in its own process, or one with --node)")
    fg(p)
    p.add_argument("--node", help="run only this node (for a second host)")
    p.add_argument("--json", action="store_true", help="end with one JSON summary line of every block's counters")
    p.add_argument("--timeout", type=float, help="stop the run after this many seconds (an error)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of failing blocks")
    p.add_argument("--restart", type=int, default=0, metavar="N",
                   help="with --node: start the node again after a failure (a killed peer, a crash), up to N times")
    p.add_argument("--restart-delay", type=float, default=1.0, metavar="S", help="seconds between restarts (1)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a flowgraph without running it")
    fg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("blocks", help="list every block type with its ports and parameters")
    p.set_defaults(func=cmd_blocks)

    p = sub.add_parser("graph", help="draw a flowgraph (nodes as clusters) to a PNG")
    fg(p)
    p.add_argument("-o", "--output", required=True, help="output image file (.png, .svg, .pdf)")
    p.set_defaults(func=cmd_graph)

    for name, (add, main) in EXTRA_COMMANDS.items():
        p = sub.add_parser(name, help=getattr(main, "__doc__", "") and main.__doc__.strip().splitlines()[0])
        add(p)
        p.set_defaults(func=main)
    return ap


def _register_extras() -> None:
    """Commands that live beside the runtime (sweep, kms, ...), imported only if present."""
    import importlib

    for mod in ("qkdflow.sweep", "qkdflow.kms"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        EXTRA_COMMANDS[m.COMMAND] = (m.add_arguments, m.main)


BUILTIN_COMMANDS = ("run", "check", "blocks", "graph")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The extra commands' modules (kms: http.server, ssl, sqlite) cost ~70 ms per process; `run` starts one
    # process per node, so load them only when the command line may name one (or asks for the full --help).
    if not argv or argv[0] not in BUILTIN_COMMANDS:
        _register_extras()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ValueError as e:  # user input problems raised outside the loader (e.g. sweep ranges)
        _err(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
