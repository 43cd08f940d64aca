"""``qkdflow sweep SWEEP.yaml``: closed-form curves over a parameter range plus Monte-Carlo points from the flowgraph.

Sweep definition (YAML; every problem is one ValueError line ``file: field: reason``, exit code 2):

.. code-block:: yaml

    sweep: fig2-attenuation                 # output stem: OUTDIR/<sweep>.png and .csv
    params:                                 # inline closed-form parameters (qkdflow.physics.link sections) ...
      detector: {efficiency: 0.1, dark_count_per_gate: 1.0e-6}
    # flowgraph: ../flowgraphs/fronthaul.yaml   ... or a base flowgraph (relative to this file); keys are then
    # overrides: [fibre.misalignment=0.02]      -p overrides (block.param), as for `qkdflow run`
    x: {fibre.length_km: {from: 0, to: 300, step: 2}}          # or a list of values
    series: {fibre.loss_db_per_km: [0.1, 0.2]}                  # one key -> values, or a list of
    #   - {label: "fixed p_dc", set: {detector.efficiency: 0.1}, color: C0, linestyle: "--"}
    outputs: [key_rate, qber]               # panels: key_rate, qber, gain, noise
    finite_key: {n_pulses: 1.0e12}          # optional: Lim 2014 curve for N pulses
    mc: {points: [25, 75, 125], slots: 2.0e8, seed: 1}         # optional Monte-Carlo points (x values)
    labels: {title: "...", x: "fibre length (km)", series: ["0.1 dB/km", "0.2 dB/km"]}

Inline keys are ``section.field`` (``section.field.sub`` for a mapping entry, or ``section`` to replace a whole
section); an inline sweep's Monte-Carlo points run a generated chain flowgraph (preparation -> laser -> modulator ->
[wdm_mux] -> fibre -> [wdm_demux] -> detector -> link_monitor) built from the same merged parameters, so curve and
points see identical values. Curves: ``qkdflow.physics.link.LinkModel.evaluate`` vectorised over length when x is
the fibre length, else one evaluation per x value. Points: ``qkdflow run --json`` subprocesses (``--jobs`` at once,
default = cores; multi-node flowgraphs are switched to ipc endpoints in a private directory per job), measured by
the flowgraph's link_monitor. The CSV holds one row per curve point (kind=curve) and per Monte-Carlo point (kind=mc,
with the closed form at that point and the z-scores of gain and QBER).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np
import yaml

COMMAND = "sweep"
OUTPUTS = ("key_rate", "qber", "gain", "noise")
TOP_KEYS = {"sweep", "description", "params", "flowgraph", "overrides", "x", "series", "outputs", "finite_key", "mc",
            "labels"}
INLINE_SECTIONS = ("clock", "preparation", "fibre", "wdm", "detector", "postprocessing")
DETECTOR_BLOCK_FIELDS = ("preset", "efficiency", "dark_count_per_gate", "afterpulse_probability", "dead_time_ns",
                         "gate_width_ns", "bob_transmittance")
MAX_POINTS = 100_000


class SweepError(ValueError):
    """A problem in a sweep definition (one line: file: field: reason)."""


# ---- definition ------------------------------------------------------------------------------------------
def _num(path: str, fld: str, v: Any, positive: bool = False) -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SweepError(f"{path}: {fld}: must be a number, got {v!r}")
    if positive and v <= 0:
        raise SweepError(f"{path}: {fld}: must be > 0, got {v!r}")
    return float(v)


def _values(path: str, fld: str, spec: Any) -> np.ndarray:
    """{from, to, step} or a list of numbers -> array."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"from", "to", "step"}
        if unknown or not {"from", "to", "step"} <= set(spec):
            raise SweepError(f"{path}: {fld}: a range needs exactly from, to, step, got keys {sorted(spec)}")
        a, b = _num(path, f"{fld}.from", spec["from"]), _num(path, f"{fld}.to", spec["to"])
        s = _num(path, f"{fld}.step", spec["step"], positive=True)
        if b < a:
            raise SweepError(f"{path}: {fld}.to: must be >= from ({a:g}), got {b:g}")
        n = int(math.floor((b - a) / s + 1e-9)) + 1
        if n > MAX_POINTS:
            raise SweepError(f"{path}: {fld}.step: {n} points is more than {MAX_POINTS}")
        return a + s * np.arange(n)
    if isinstance(spec, list) and spec:
        return np.array([_num(path, f"{fld}[{i}]", v) for i, v in enumerate(spec)])
    raise SweepError(f"{path}: {fld}: must be {{from, to, step}} or a non-empty list of numbers, got {spec!r}")


def load_sweep(path: str, overrides: list[str] = ()) -> dict:
    """Read and validate a sweep definition; returns a normalised dict."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise SweepError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SweepError(f"{path}{f':{mark.line + 1}' if mark else ''}: YAML syntax error: "
                         f"{getattr(e, 'problem', e)}") from None
    if not isinstance(doc, dict):
        raise SweepError(f"{path}: sweep: the file must be a mapping (sweep, params|flowgraph, x, ...)")
    for k in doc:
        if k not in TOP_KEYS:
            raise SweepError(f"{path}: {k}: unknown key (allowed: {', '.join(sorted(TOP_KEYS))})")
    here = os.path.dirname(os.path.abspath(path))
    sw: dict[str, Any] = {"path": path, "name": str(doc.get("sweep") or os.path.splitext(os.path.basename(path))[0])}
    if ("params" in doc) == ("flowgraph" in doc):
        raise SweepError(f"{path}: params/flowgraph: give exactly one (inline parameters or a base flowgraph)")
    if "params" in doc:
        if not isinstance(doc["params"], dict):
            raise SweepError(f"{path}: params: must be a mapping of sections (fibre, detector, ...)")
        for sec in doc["params"]:
            if sec not in INLINE_SECTIONS:
                raise SweepError(f"{path}: params.{sec}: unknown section (allowed: {', '.join(INLINE_SECTIONS)})")
        sw["params"] = copy.deepcopy(doc["params"])
        for ov in overrides:
            k, v = _parse_kv(path, ov)
            _set_inline(path, sw["params"], k, v, "-p")
    else:
        fg = doc["flowgraph"]
        if not isinstance(fg, str):
            raise SweepError(f"{path}: flowgraph: must be a file path, got {fg!r}")
        sw["flowgraph"] = fg if os.path.isabs(fg) else os.path.normpath(os.path.join(here, fg))
        ovs = doc.get("overrides") or []
        if not isinstance(ovs, list) or not all(isinstance(o, str) for o in ovs):
            raise SweepError(f"{path}: overrides: must be a list of block.param=value strings")
        sw["overrides"] = list(ovs) + list(overrides)
    x = doc.get("x")
    if not isinstance(x, dict) or len(x) != 1:
        raise SweepError(f"{path}: x: must be a mapping with exactly one swept key, e.g. "
                         "{fibre.length_km: {from: 0, to: 200, step: 10}}")
    (xkey, xspec), = x.items()
    sw["x_key"] = str(xkey)
    sw["x"] = _values(path, f"x.{xkey}", xspec)
    sw["series"] = _series(path, doc.get("series"), doc.get("labels") or {})
    outs = doc.get("outputs", ["key_rate", "qber"])
    if not isinstance(outs, list) or not outs or any(o not in OUTPUTS for o in outs):
        raise SweepError(f"{path}: outputs: must be a non-empty list of {', '.join(OUTPUTS)}, got {outs!r}")
    sw["outputs"] = outs
    fk = doc.get("finite_key")
    sw["n_pulses"] = None
    if fk is not None:
        if not isinstance(fk, dict) or set(fk) != {"n_pulses"}:
            raise SweepError(f"{path}: finite_key: must be {{n_pulses: N}}")
        sw["n_pulses"] = _num(path, "finite_key.n_pulses", fk["n_pulses"], positive=True)
    mc = doc.get("mc")
    sw["mc"] = None
    if mc is not None:
        if not isinstance(mc, dict) or not {"points", "slots"} <= set(mc) or set(mc) - {"points", "slots", "seed",
                                                                                          "series"}:
            raise SweepError(f"{path}: mc: must be {{points: [x...], slots: N, seed?: int, series?: [index...]}}")
        pts = _values(path, "mc.points", mc["points"])
        slots = _num(path, "mc.slots", mc["slots"], positive=True)
        if slots != int(slots) or slots < 1000:
            raise SweepError(f"{path}: mc.slots: must be an integer >= 1000, got {mc['slots']!r}")
        seed = mc.get("seed", 1)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SweepError(f"{path}: mc.seed: must be an integer >= 0, got {seed!r}")
        which = mc.get("series", list(range(len(sw["series"]))))
        if not isinstance(which, list) or any(isinstance(i, bool) or not isinstance(i, int)
                                              or not 0 <= i < len(sw["series"]) for i in which):
            raise SweepError(f"{path}: mc.series: must be a list of series indices 0..{len(sw['series']) - 1}")
        sw["mc"] = {"points": pts, "slots": int(slots), "seed": seed, "series": which}
    labels = doc.get("labels") or {}
    if not isinstance(labels, dict):
        raise SweepError(f"{path}: labels: must be a mapping (title, x, series)")
    sw["labels"] = {"title": str(labels.get("title", sw["name"])), "x": str(labels.get("x", sw["x_key"]))}
    # Evaluate the base once per series now, so bad parameter values fail before anything runs.
    for s in sw["series"]:
        try:
            _closed_form(sw, s, sw["x"][:1])
        except SweepError:
            raise
        except ValueError as e:
            raise SweepError(f"{path}: series {s['label']!r}: {e}") from None
    return sw


def _parse_kv(path: str, text: str) -> tuple[str, Any]:
    key, eq, val = text.partition("=")
    if not eq or not key.strip():
        raise SweepError(f"{path}: -p {text!r}: expected NAME=VALUE, e.g. fibre.length_km=40")
    return key.strip(), yaml.safe_load(val) if val.strip() else ""


def _series(path: str, spec: Any, labels: dict) -> list[dict]:
    names = labels.get("series") if isinstance(labels, dict) else None
    if spec is None:
        out = [{"label": "", "set": {}}]
    elif isinstance(spec, dict):
        if len(spec) != 1:
            raise SweepError(f"{path}: series: a mapping names exactly one key with a list of values "
                             "(use a list of {label, set} for more)")
        (k, vals), = spec.items()
        if not isinstance(vals, list) or not vals:
            raise SweepError(f"{path}: series.{k}: must be a non-empty list of values")
        out = [{"label": f"{k} = {v}", "set": {str(k): v}} for v in vals]
    elif isinstance(spec, list) and spec:
        out = []
        for i, s in enumerate(spec):
            if not isinstance(s, dict) or not isinstance(s.get("set", {}), dict) or \
                    set(s) - {"label", "set", "color", "linestyle"}:
                raise SweepError(f"{path}: series[{i}]: must be {{label, set: {{key: value}}, color?, linestyle?}}")
            out.append({"label": str(s.get("label", f"series {i}")), "set": dict(s.get("set", {})),
                        "color": s.get("color"), "linestyle": s.get("linestyle")})
    else:
        raise SweepError(f"{path}: series: must be {{key: [values]}} or a list of {{label, set}}")
    if names is not None:
        if not isinstance(names, list) or len(names) != len(out):
            raise SweepError(f"{path}: labels.series: must list {len(out)} labels, one per series")
        for s, n in zip(out, names):
            s["label"] = str(n)
    return out


# ---- parameters ---------------------------------------------------------------------------------------
def _set_inline(path: str, params: dict, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    if parts[0] not in INLINE_SECTIONS or len(parts) > 3:
        raise SweepError(f"{path}: {where} {key}: inline keys are section.field (sections: "
                         f"{', '.join(INLINE_SECTIONS)})")
    if len(parts) == 1:
        if not isinstance(value, dict):
            raise SweepError(f"{path}: {where} {key}: a whole section must be a mapping")
        params[key] = copy.deepcopy(value)
        return
    sec = params.setdefault(parts[0], {})
    if len(parts) == 2:
        sec[parts[1]] = value
    else:
        sub = sec.setdefault(parts[1], {})
        if not isinstance(sub, dict):
            raise SweepError(f"{path}: {where} {key}: {parts[0]}.{parts[1]} is not a mapping")
        sub[parts[2]] = value


def inline_params(sw: dict, series: dict, x: float | None = None) -> dict:
    """The closed-form parameter dict of one series (and x value), merged over link.DEFAULTS like parse_params."""
    from qkdflow.physics.link import DEFAULTS

    p = copy.deepcopy(sw["params"])
    for k, v in series["set"].items():
        _set_inline(sw["path"], p, k, v, f"series {series['label']!r}:")
    if x is not None:
        _set_inline(sw["path"], p, sw["x_key"], float(x), "x")
    out = copy.deepcopy(DEFAULTS)
    for sec, body in p.items():
        if sec == "wdm" or (sec == "detector" and "preset" in body):
            out[sec] = dict(body)  # grid / preset defaults are resolved by the physics parsers
        else:
            out[sec].update(body)
    if "wdm" not in p:
        out.pop("wdm")
    return out


def _flowgraph_overrides(sw: dict, series: dict, x: float | None = None) -> list[str]:
    ovs = list(sw["overrides"]) + [f"{k}={json.dumps(v)}" for k, v in series["set"].items()]
    if x is not None:
        ovs.append(f"{sw['x_key']}={float(x)!r}")
    return ovs


def _load_graph(sw: dict, overrides: list[str]):
    from qkdflow.runtime.graph import FlowgraphError, load_flowgraph

    try:
        return load_flowgraph(sw["flowgraph"], overrides)
    except FlowgraphError as e:
        raise SweepError(f"{sw['path']}: flowgraph {sw['flowgraph']}: {e.errors[0]}") from None


def _closed_form(sw: dict, series: dict, xs: np.ndarray) -> dict:
    """Curves of one series over xs (vectorised when x is the fibre length)."""
    from qkdflow.physics.link import LinkModel

    xs = np.asarray(xs, dtype=float)
    if "params" in sw:
        if sw["x_key"] == "fibre.length_km":
            model = LinkModel(inline_params(sw, series))
            return _pack(model.evaluate(xs, n_pulses=sw["n_pulses"]), model)
        rows = [_pack(LinkModel(inline_params(sw, series, x)).evaluate(n_pulses=sw["n_pulses"]), None)
                for x in xs]
        return _stack(rows)
    from qkdflow.physics.from_graph import closed_form_params

    bname, _, fld = sw["x_key"].partition(".")
    g = _load_graph(sw, _flowgraph_overrides(sw, series))
    if fld == "length_km" and bname in g.blocks and g.blocks[bname].type == "fibre":
        cf = closed_form_params(g)
        own = float(g.blocks[bname].params.get("length_km", 20.0))
        other = cf["fibre"]["length_km"] - own  # the other spans stay as they are
        model = LinkModel(cf)
        return _pack(model.evaluate(xs + other, n_pulses=sw["n_pulses"]), model)
    rows = []
    for x in xs:
        cf = closed_form_params(_load_graph(sw, _flowgraph_overrides(sw, series, x)))
        rows.append(_pack(LinkModel(cf).evaluate(n_pulses=sw["n_pulses"]), None))
    return _stack(rows)


def _pack(r, model) -> dict:
    return {"key_rate": np.atleast_1d(r.key_rate_per_pulse), "key_rate_bps": np.atleast_1d(r.key_rate_bps),
            "finite_key_rate": None if r.finite_key_rate_per_pulse is None else np.atleast_1d(
                r.finite_key_rate_per_pulse),
            "plob": np.atleast_1d(r.plob_per_pulse), "qber": np.atleast_1d(r.qber["signal"]),
            "gain": np.atleast_1d(r.gain["signal"]), "noise": np.atleast_1d(r.noise_photons_per_gate),
            "dark": float(r.dark_count_per_gate), "rate_hz": model.params.rate_hz if model else None}


def _stack(rows: list[dict]) -> dict:
    out = {}
    for k in rows[0]:
        if k in ("dark", "rate_hz"):
            out[k] = rows[0][k]
        elif rows[0][k] is None:
            out[k] = None
        else:
            out[k] = np.concatenate([r[k] for r in rows])
    return out


# ---- Monte Carlo -------------------------------------------------------------------------------------------
def chain_flowgraph(params: dict, slots: int, seed: int, name: str = "sweep-point") -> dict:
    """A single-node chain flowgraph document for merged inline parameters (see module docstring)."""
    prep, fib, det = params["preparation"], params["fibre"], params["detector"]
    bad = set(det) - set(DETECTOR_BLOCK_FIELDS)
    if bad:
        raise SweepError(f"detector.{sorted(bad)[0]}: not a detector block parameter (Monte Carlo needs a flowgraph)")
    frame = int(min(slots, 10_000_000))
    blocks: dict[str, dict] = {
        "preparation": {"type": "preparation", "seed": seed, "total_slots": int(slots), "slots_per_frame": frame,
                        **{k: prep[k] for k in ("intensities", "probabilities", "basis_bias")}},
        "laser": {"type": "laser"},
        "modulator": {"type": "modulator", "state_prep_error": prep.get("state_prep_error", 0.0)},
        "fibre": {"type": "fibre", "seed": seed + 101,
                  **{k: fib[k] for k in ("length_km", "loss_db_per_km", "misalignment", "raman_model",
                                         "temperature_k", "raman_beta_per_km_nm") if k in fib}},
        "detector": {"type": "detector", "seed": seed + 202, **det},
        "monitor": {"type": "link_monitor", "output_dir": "", "plots": False, "table": "none",
                    **{k: params["postprocessing"][k] for k in ("ec_efficiency", "eps_sec", "eps_cor")}},
    }
    chain = ["laser", "modulator"]
    if "wdm" in params:
        blocks["wdm"] = {"type": "wdm_mux", "seed": seed + 303, **params["wdm"]}
        chain.append("wdm")
    chain.append("fibre")
    if "wdm" in params:
        blocks["demux"] = {"type": "wdm_demux"}
        chain.append("demux")
    chain.append("detector")
    conns = [["preparation.out", "laser.in"], ["preparation.out", "monitor.prep"], ["detector.out", "monitor.clicks"]]
    conns += [[f"{a}.out", f"{b}.in"] for a, b in zip(chain, chain[1:])]
    return {"flowgraph": name, "clock": {"rate_hz": float(params["clock"]["rate_hz"])}, "blocks": blocks,
            "connections": conns}


def _mc_jobs(sw: dict, workdir: str) -> list[dict]:
    """One job per (series, point): the flowgraph file, its overrides and the monitor's block name."""
    mc = sw["mc"]
    jobs = []
    for si in mc["series"]:
        s = sw["series"][si]
        for pi, x in enumerate(mc["points"]):
            seed = mc["seed"] * 1000 + si * 97 + pi * 7919  # distinct, reproducible streams per point
            job = {"series": si, "x": float(x), "index": len(jobs)}
            if "params" in sw:
                doc = chain_flowgraph(inline_params(sw, s, x), mc["slots"], seed)
                fpath = os.path.join(workdir, f"point{len(jobs)}.yaml")
                with open(fpath, "w", encoding="utf-8") as f:
                    yaml.safe_dump(doc, f, sort_keys=False)
                job.update(path=fpath, overrides=[], monitor="monitor")
            else:
                ovs = _flowgraph_overrides(sw, s, x)
                g = _load_graph(sw, ovs)
                mons = [b for b, spec in g.blocks.items() if spec.type == "link_monitor"]
                preps = [b for b, spec in g.blocks.items() if spec.type == "preparation"]
                dets = [b for b, spec in g.blocks.items() if spec.type == "detector"]
                if len(mons) != 1 or len(preps) != 1:
                    raise SweepError(f"{sw['path']}: mc: the flowgraph needs exactly one link_monitor and one "
                                     f"preparation block, found {len(mons)} and {len(preps)}")
                ovs += [f"{preps[0]}.total_slots={mc['slots']}", f"{preps[0]}.seed={seed}",
                        f"{mons[0]}.output_dir=", f"{mons[0]}.table=none", f"{mons[0]}.plots=false"]
                ovs += [f"{d}.seed={seed + 202}" for d in dets]
                jdir = os.path.join(workdir, f"job{len(jobs)}")
                os.makedirs(jdir, exist_ok=True)
                if len(g.nodes) > 1:  # private ipc endpoints: parallel jobs never share a port
                    for n in g.nodes:
                        ovs += [f"nodes.{n}.transport=ipc", f"nodes.{n}.ipc_dir={jdir}"]
                path = _monitor_only(sw["flowgraph"], g, mons[0], jdir)
                job.update(path=path, overrides=ovs, monitor=mons[0])
            jobs.append(job)
    return jobs


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _monitor_only(path: str, g, monitor: str, jdir: str) -> str:
    """The base flowgraph without the blocks the monitor does not depend on (key distillation, key stores,
    fronthaul traffic): a Monte-Carlo point needs only the link, and parallel points must not share key stores."""
    keep, todo = {monitor}, [monitor]
    while todo:
        b = todo.pop()
        for e in g.edges:
            if e.dst == b and e.src not in keep:
                keep.add(e.src)
                todo.append(e.src)
    if keep == set(g.blocks):
        return path
    doc = _plain(g.raw)
    doc["blocks"] = {b: v for b, v in doc["blocks"].items() if b in keep}
    doc["connections"] = [c for c in doc.get("connections") or []
                          if c[0].split(".")[0] in keep and c[1].split(".")[0] in keep]
    out = os.path.join(jdir, "link.yaml")
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return out


def _run_job(job: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "qkdflow.runtime.cli", "run", job["path"], "--json", "--quiet"]
    for ov in job["overrides"]:
        cmd += ["-p", ov]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        err = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"Monte-Carlo point x={job['x']:g} (series {job['series']}) failed: {err}")
    summary = json.loads(lines[-1])
    for blocks in summary["nodes"].values():
        if blocks and job["monitor"] in blocks:
            return blocks[job["monitor"]]
    raise RuntimeError(f"Monte-Carlo point x={job['x']:g}: no link_monitor report in the run summary")


def run_mc(sw: dict, jobs_n: int, progress: bool, timeout_s: float = 3600.0) -> list[dict]:
    """Run every Monte-Carlo point (``jobs_n`` subprocesses at once); returns one dict per point."""
    with tempfile.TemporaryDirectory(prefix="qkdflow-sweep-") as work:
        jobs = _mc_jobs(sw, work)
        results: list[dict | None] = [None] * len(jobs)
        done = 0
        with ThreadPoolExecutor(max_workers=max(1, jobs_n)) as pool:
            futs = {pool.submit(_run_job, j, timeout_s): j for j in jobs}
            for fut in as_completed(futs):
                j = futs[fut]
                rep = fut.result()
                cf = rep.get("closed_form") or {}
                results[j["index"]] = {
                    "series": j["series"], "x": j["x"], "slots": rep["slots"],
                    "key_rate": rep["key_rate_per_pulse"], "key_rate_se": rep["key_rate_se"],
                    "finite_key_rate": rep["finite_key_rate_per_pulse"], "finite_key_rate_se": rep["finite_key_rate_se"],
                    "qber": rep["qber"][0], "qber_se": rep["qber_se"][0],
                    "gain": rep["gain"][0], "gain_se": rep["gain_se"][0],
                    "cf_key_rate": cf.get("key_rate_per_pulse"), "cf_qber": (cf.get("qber") or [None])[0],
                    "cf_gain": (cf.get("gain") or [None])[0]}
                done += 1
                if progress:
                    sys.stderr.write(f"\r{sw['name']}: Monte-Carlo points {done}/{len(jobs)} ")
                    sys.stderr.flush()
        if progress and jobs:
            sys.stderr.write("\n")
    for p in results:
        p["z_gain"] = (p["gain"] - p["cf_gain"]) / p["gain_se"] if p["cf_gain"] is not None and p["gain_se"] > 0 \
            else None
        p["z_qber"] = (p["qber"] - p["cf_qber"]) / p["qber_se"] if p["cf_qber"] is not None and p["qber_se"] > 0 \
            else None
    return results  # type: ignore[return-value]


# ---- outputs --------------------------------------------------------------------------------------------------
CSV_COLUMNS = ["kind", "series", "label", "x", "key_rate_per_pulse", "key_rate_bps", "key_rate_se",
               "finite_key_rate_per_pulse", "finite_key_rate_se", "plob_per_pulse", "qber_signal", "qber_se",
               "gain_signal", "gain_se", "noise_photons_per_gate", "dark_count_per_gate", "cf_key_rate_per_pulse",
               "cf_qber_signal", "cf_gain_signal", "z_gain", "z_qber"]


def write_csv(path: str, sw: dict, curves: list[dict], mc: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
        w.writeheader()
        for i, c in enumerate(curves):
            for j, x in enumerate(sw["x"]):
                w.writerow({"kind": "curve", "series": i, "label": c["label"], "x": f"{x:.6g}",
                            "key_rate_per_pulse": f"{c['key_rate'][j]:.9e}",
                            "key_rate_bps": f"{c['key_rate_bps'][j]:.9e}",
                            "finite_key_rate_per_pulse": "" if c["finite_key_rate"] is None
                            else f"{c['finite_key_rate'][j]:.9e}",
                            "plob_per_pulse": f"{c['plob'][j]:.9e}", "qber_signal": f"{c['qber'][j]:.9e}",
                            "gain_signal": f"{c['gain'][j]:.9e}", "noise_photons_per_gate": f"{c['noise'][j]:.9e}",
                            "dark_count_per_gate": f"{c['dark']:.9e}"})
        for p in mc:
            w.writerow({"kind": "mc", "series": p["series"], "label": curves[p["series"]]["label"],
                        "x": f"{p['x']:.6g}", "key_rate_per_pulse": f"{p['key_rate']:.9e}",
                        "key_rate_se": f"{p['key_rate_se']:.9e}",
                        "finite_key_rate_per_pulse": f"{p['finite_key_rate']:.9e}",
                        "finite_key_rate_se": f"{p['finite_key_rate_se']:.9e}",
                        "qber_signal": f"{p['qber']:.9e}", "qber_se": f"{p['qber_se']:.9e}",
                        "gain_signal": f"{p['gain']:.9e}", "gain_se": f"{p['gain_se']:.9e}",
                        "cf_key_rate_per_pulse": "" if p["cf_key_rate"] is None else f"{p['cf_key_rate']:.9e}",
                        "cf_qber_signal": "" if p["cf_qber"] is None else f"{p['cf_qber']:.9e}",
                        "cf_gain_signal": "" if p["cf_gain"] is None else f"{p['cf_gain']:.9e}",
                        "z_gain": "" if p["z_gain"] is None else f"{p['z_gain']:.3f}",
                        "z_qber": "" if p["z_qber"] is None else f"{p['z_qber']:.3f}"})


def max_x_with_key(x: np.ndarray, rate: np.ndarray) -> float | None:
    """Largest x on the grid with a positive key rate (None if none)."""
    pos = np.nonzero(np.asarray(rate) > 0)[0]
    return float(x[pos[-1]]) if pos.size else None


def run_sweep(path: str, overrides: list[str] = (), outdir: str = "out", jobs: int | None = None,
              mc: bool = True, mc_slots: int | None = None, progress: bool = False) -> dict:
    """Load, evaluate, run the Monte-Carlo points, write OUTDIR/<name>.png and .csv; return the numbers."""
    sw = load_sweep(path, overrides)
    if mc_slots is not None and sw["mc"] is not None:
        sw["mc"]["slots"] = int(mc_slots)
    curves = []
    for s in sw["series"]:
        c = _closed_form(sw, s, sw["x"])
        c.update(label=s["label"], color=s.get("color"), linestyle=s.get("linestyle"), x=sw["x"])
        curves.append(c)
    points = run_mc(sw, jobs or os.cpu_count() or 1, progress) if (mc and sw["mc"]) else []
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise SweepError(f"-o {outdir}: cannot create: {e.strerror}") from None
    png, csv_path = os.path.join(outdir, sw["name"] + ".png"), os.path.join(outdir, sw["name"] + ".csv")
    from .plots import sweep_figure

    sweep_figure(png, curves, points, sw["outputs"], sw["labels"])
    write_csv(csv_path, sw, curves, points)
    summary = {"png": png, "csv": csv_path, "series": [
        {"label": c["label"], "max_x_with_key": max_x_with_key(sw["x"], c["key_rate"]),
         "max_x_with_finite_key": None if c["finite_key_rate"] is None
         else max_x_with_key(sw["x"], c["finite_key_rate"])} for c in curves], "mc": points}
    return summary


# ---- CLI -----------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep definition YAML")
    p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                   help="override a base parameter (inline: section.field; flowgraph: block.param); repeatable")
    p.add_argument("--jobs", type=int, default=None, help="Monte-Carlo runs at once (default: number of cores)")
    p.add_argument("-o", "--outdir", default="out", help="output directory for <sweep>.png and <sweep>.csv")
    p.add_argument("--no-mc", action="store_true", help="closed-form curves only")
    p.add_argument("--mc-slots", type=float, default=None, help="override mc.slots (slots per Monte-Carlo point)")


def main(args: argparse.Namespace) -> int:
    """Sweep a parameter: closed-form curves, Monte-Carlo points, PLOB; writes PNG + CSV."""
    if args.jobs is not None and args.jobs < 1:
        raise SweepError(f"--jobs: must be >= 1, got {args.jobs}")
    if args.mc_slots is not None and (args.mc_slots < 1000 or args.mc_slots != int(args.mc_slots)):
        raise SweepError(f"--mc-slots: must be an integer >= 1000, got {args.mc_slots:g}")
    try:
        s = run_sweep(args.sweep, args.param or [], args.outdir, args.jobs, not args.no_mc,
                      None if args.mc_slots is None else int(args.mc_slots), sys.stderr.isatty())
    except RuntimeError as e:
        print(f"qkdflow: {args.sweep}: {e}", file=sys.stderr)
        return 1
    for ser in s["series"]:
        fk = ser["max_x_with_finite_key"]
        print(f"{ser['label'] or 'curve'}: key up to x = {ser['max_x_with_key']}"
              + ("" if fk is None else f", finite key up to x = {fk}"))
    for p in s["mc"]:
        print(f"  MC series {p['series']} x={p['x']:g}: gain z={p['z_gain']:.2f}, QBER z={p['z_qber']:.2f}, "
              f"key {p['key_rate']:.3e} +- {p['key_rate_se']:.1e} (closed form {p['cf_key_rate']:.3e})"
              if p["z_gain"] is not None and p["z_qber"] is not None else f"  MC series {p['series']} x={p['x']:g}")
    print(f"wrote {s['png']}, {s['csv']}")
    return 0
