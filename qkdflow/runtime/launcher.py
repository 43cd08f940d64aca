"""Run a whole flowgraph: one OS process per node, supervised.

The parent starts ``qkdflow run FLOWGRAPH --node NAME --child`` for every node, reads each
child's status and summary lines from its stdout, and stops the run when any node fails or
dies: the survivors get SIGTERM, then SIGKILL one second later, so nothing is left behind and
the user learns which node and block failed within about two seconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


STATUS = "QKDFLOW-STATUS "
SUMMARY = "QKDFLOW-SUMMARY "


@dataclass
class Child:
    node: str
    proc: subprocess.Popen
    status: dict = field(default_factory=dict)
    summary: dict | None = None
    lines: list = field(default_factory=list)


def _reader(child: Child) -> None:
    assert child.proc.stdout is not None
    for raw in child.proc.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith(STATUS):
            try:
                child.status = json.loads(line[len(STATUS):])
            except ValueError:
                pass
        elif line.startswith(SUMMARY):
            try:
                child.summary = json.loads(line[len(SUMMARY):])
            except ValueError:
                pass
        else:
            child.lines.append(line)
            print(line, flush=True)


def spawn(path: str, nodes: list[str], overrides: list[str], extra_args: list[str] = ()) -> list[Child]:
    """Start ``qkdflow run PATH --child --node N`` for every node (their output is read by threads)."""
    children: list[Child] = []
    base = [sys.executable, "-m", "qkdflow.runtime.cli", "run", path, "--child"]
    for ov in overrides:
        base += ["-p", ov]
    base += list(extra_args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for n in nodes:
        proc = subprocess.Popen(base + ["--node", n], stdout=subprocess.PIPE, env=env)
        c = Child(n, proc)
        threading.Thread(target=_reader, args=(c,), daemon=True).start()
        children.append(c)
    return children


def run_nodes(path: str, nodes: list[str], overrides: list[str], progress, timeout_s: float | None = None,
              extra_args: list[str] = (), children: list[Child] | None = None) -> tuple[bool, dict, list[str]]:
    """Start every node as a child process (or take ``spawn``'s); return (ok, {node: summary}, failure lines)."""
    if children is None:
        children = spawn(path, nodes, overrides, extra_args)
    failures: list[str] = []
    t0 = time.monotonic()
    try:
        while True:
            codes = {c.node: c.proc.poll() for c in children}
            bad = [c for c in children if codes[c.node] not in (None, 0)]
            if bad:
                for c in bad:
                    rc = codes[c.node]
                    why = f"killed by signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"exited with code {rc}"
                    failures.append(f"node {c.node} {why}")
                break
            if all(code == 0 for code in codes.values()):
                break
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                failures.append(f"run timed out after {timeout_s:g} s")
                break
            if progress is not None:
                progress({c.node: c.status for c in children})
            time.sleep(0.01)
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        _stop_all(children)
    for c in children:  # drain readers
        if c.proc.stdout:
            try:
                c.proc.stdout.close()
            except OSError:
                pass
    return not failures, {c.node: c.summary for c in children}, failures


def _stop_all(children: list[Child]) -> None:
    alive = [c for c in children if c.proc.poll() is None]
    for c in alive:
        c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 1.0
    for c in alive:
        try:
            c.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()


def watch_parent() -> None:
    """In a child: exit when the supervising parent disappears (no orphans left running)."""
    parent = os.getppid()

    def loop() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=loop, daemon=True).start()


RESTART_ENV = "QKDFLOW_RESTART"


def restart_number() -> int:
    """Which restart of a supervised node this process is (0: the first start)."""
    try:
        return max(0, int(os.environ.get(RESTART_ENV, "0")))
    except ValueError:
        return 0


def derive_seeds(graph, restart: int, node: str | None = None) -> list[str]:
    """Restart ``n > 0`` of a node draws its blocks' randomness from (seed, n), not from the seed alone.

    A simulated AAU restarted with its fixed ``seed`` would prepare the same pulses again and distil the same key
    bits under new block ids; a real AAU takes its choices from a physical random source and never repeats. Runs
    stay reproducible: restart ``n`` of a flowgraph always gets the same derived seeds. Returns the changed blocks.
    """
    changed = []
    if restart <= 0:
        return changed
    for name, spec in graph.blocks.items():
        if node is not None and spec.node != node:
            continue
        seed = spec.params.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            import numpy as np

            mixed = np.random.SeedSequence([seed, restart]).generate_state(1)[0]
            spec.params["seed"] = int(mixed) & 0x7FFFFFFF
            changed.append(name)
    return changed


def supervise(path: str, node: str, overrides: list[str], restarts: int, delay_s: float, progress,
              timeout_s: float | None = None, extra_args: list[str] = ()) -> tuple[bool, dict, list[str]]:
    """Run one node as a child process and start it again (up to ``restarts`` times) whenever it fails.

    The node's key store, authentication state and the peer's start-up reconciliation make a restart safe; the
    restarted child learns its restart number from ``QKDFLOW_RESTART`` (``derive_seeds``). A child that ends
    cleanly (its sources finished) ends the supervision.
    """
    n = 0
    while True:
        os.environ[RESTART_ENV] = str(n)
        t0 = time.monotonic()
        ok, summaries, failures = run_nodes(path, [node], overrides, progress, timeout_s, extra_args)
        if ok or n >= restarts or "interrupted" in failures:
            return ok, summaries, failures
        n += 1
        print(f"[{node}:supervisor] {'; '.join(failures)} after {time.monotonic() - t0:.1f} s; "
              f"restart {n} of {restarts} in {delay_s:g} s", file=sys.stderr, flush=True)
        try:
            time.sleep(delay_s)
        except KeyboardInterrupt:
            return False, summaries, failures + ["interrupted"]
