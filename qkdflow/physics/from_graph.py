"""Closed-form parameters from a loaded flowgraph: the link model sees exactly the YAML's values.

``closed_form_params(graph)`` collects the physical-layer blocks by type into the nested dict that
``qkdflow.physics.link.parse_params`` takes:

  clock.rate_hz                    <- graph clock (else the preparation's rate_hz)
  preparation.*                    <- preparation (intensities, probabilities, basis_bias);
                                      state_prep_error <- modulator (the per-pulse error is the modulator's)
  fibre.length_km                  <- sum over all fibre spans
  fibre.loss_db_per_km, raman_*    <- the spans (must agree: the closed form has one fibre type)
  fibre.misalignment               <- spans composed exactly: f(1-g) + (1-f)g per span
  wdm.*                            <- wdm_mux (only the fields given; the grid fills the rest); absent without a mux
  detector.*                       <- detector (preset and the fields given)
  meta.extra_loss_db               <- modulator insertion loss: the closed form has no place for it (not folded
                                      into bob_transmittance silently; keep it 0 for agreement runs)

Eavesdroppers are not part of the closed form; their block names are listed in ``meta["eavesdroppers"]``.
A ``meta`` key is added to the result (ignored by parse_params, which skips unknown sections).
"""
from __future__ import annotations

from typing import Any

__all__ = ["closed_form_params"]

EAVESDROPPERS = ("intercept_resend", "pns_attack", "beam_splitter")


def _of_type(graph: Any, type_name: str) -> list[str]:
    return [n for n, s in graph.blocks.items() if s.type == type_name]


def _with_defaults(spec: Any) -> dict:
    """A block's parameters as it runs: the YAML's values over the block class's defaults (None = not given)."""
    vals = {p.name: p.default for p in spec.cls.params if not p.required and p.default is not None}
    vals.update(spec.params)
    return vals


def _one(graph: Any, type_name: str) -> dict | None:
    names = _of_type(graph, type_name)
    if len(names) > 1:
        raise ValueError(f"blocks: the closed form models one {type_name}, found {len(names)}: {', '.join(names)}")
    return _with_defaults(graph.blocks[names[0]]) if names else None


def closed_form_params(graph: Any) -> dict:
    """Nested parameter dict for ``qkdflow.physics.link.parse_params`` from a loaded ``Graph``."""
    from blocks.detector import Detector
    from blocks.wdm_mux import PLAN_KEYS

    out: dict[str, Any] = {}
    meta: dict[str, Any] = {"eavesdroppers": [n for t in EAVESDROPPERS for n in _of_type(graph, t)],
                            "extra_loss_db": 0.0}
    prep = _one(graph, "preparation")
    rate = graph.clock.get("rate_hz") if getattr(graph, "clock", None) else None
    if rate is None and prep is not None and "rate_hz" in prep:
        rate = prep["rate_hz"]
    if rate is not None:
        out["clock"] = {"rate_hz": float(rate)}
    if prep is not None:
        out["preparation"] = {k: prep[k] for k in ("intensities", "probabilities", "basis_bias") if k in prep}
    mod = _one(graph, "modulator")
    if mod is not None:
        if "state_prep_error" in mod:
            out.setdefault("preparation", {})["state_prep_error"] = mod["state_prep_error"]
        meta["extra_loss_db"] += float(mod.get("insertion_loss_db", 0.0))
    spans = _of_type(graph, "fibre")
    if spans:
        fib: dict[str, Any] = {"length_km": 0.0}
        flip = 0.0
        for name in spans:
            p = _with_defaults(graph.blocks[name])
            fib["length_km"] += float(p.get("length_km", 20.0))
            g = float(p.get("misalignment", 0.0))
            flip = flip * (1.0 - g) + (1.0 - flip) * g
            for key, default in (("loss_db_per_km", "ssmf"), ("raman_model", "literature"),
                                 ("temperature_k", 300.0), ("raman_beta_per_km_nm", 3e-9)):
                v = p.get(key, default)
                if key in fib and fib[key] != v:
                    raise ValueError(f"blocks.{name}.{key}: the closed form needs one value for all fibre spans, "
                                     f"got {v!r} and {fib[key]!r}")
                fib[key] = v
        fib["misalignment"] = flip
        out["fibre"] = fib
    mux = _one(graph, "wdm_mux")
    if mux is not None:
        w = {k: mux[k] for k in PLAN_KEYS if mux.get(k) is not None}
        w.setdefault("classical_channels", [])
        out["wdm"] = w
    det = _one(graph, "detector")
    if det is not None:
        out["detector"] = {k: det[k] for k in Detector._DET_FIELDS if det.get(k) is not None}
    out["meta"] = meta
    return out
