"""Monte-Carlo flowgraphs agree with the closed form (qkdflow.physics) within 4 standard deviations.

Each case builds a YAML flowgraph (prep -> laser -> modulator -> [mux] -> fibre span(s) [-> Eve] -> [demux] ->
detector) with a LinkCounter sink (tests/mc_helpers.py) that joins Alice's choices with Bob's clicks per slot.
Per intensity class:
  * gain: the click count of class k over S slots is Binomial(S, p_k Q_k) exactly (class choice and detection
    together), so z = (clicks - S p_k Q_k) / sqrt(S p_k Q_k (1 - p_k Q_k));
  * QBER over matched-basis clicks (double click = 1/2 error): per-click error x in {0, 1/2, 1} has variance
    (P(wrong only) + P(double)/4)/Q - E^2 from the closed form's click-pattern probabilities.
The closed-form parameters come from the same graph via qkdflow.physics.from_graph.closed_form_params.
"""
from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest
import yaml

from qkdflow.physics.fibre import db_to_transmittance
from qkdflow.physics.from_graph import closed_form_params
from qkdflow.physics.link import LinkModel, parse_params
from qkdflow.runtime.graph import load_flowgraph
from qkdflow.runtime.scheduler import NodeRunner

sys.path.insert(0, os.path.dirname(__file__))
from blocks.intercept_resend import intercept_resend_closed_form  # noqa: E402

CLASSES = ("signal", "decoy", "vacuum")
Z_MAX = 4.0


def build(tmp_path, *, slots: int, spans=((5.0, 0.01),), loss: float | str = 0.2, prep: dict | None = None,
          modulator: dict | None = None, wdm: dict | None = None, detector: dict | None = None,
          eve: dict | None = None, laser: dict | None = None, frame: int = 4_000_000, name: str = "g") -> str:
    """Write a flowgraph; ``eve`` (a block dict) goes after the first fibre span."""
    case_seed = zlib.crc32(name.encode()) % 100_000  # distinct streams per case: cases are independent evidence
    blocks = {
        "prep": {"type": "preparation", "seed": case_seed, "slots_per_frame": min(frame, slots), "total_slots": slots,
                 **(prep or {})},
        "laser": {"type": "laser", **(laser or {})},
        "mod": {"type": "modulator", **(modulator or {})},
        "det": {"type": "detector", "efficiency": 0.1, "seed": case_seed + 1,
                **({} if "preset" in (detector or {}) else {"dark_count_per_gate": 1e-6}), **(detector or {})},
        "mon": {"type": "mc_helpers:LinkCounter"},
    }
    chain = ["laser", "mod"]
    if wdm is not None:
        blocks["mux"] = {"type": "wdm_mux", **wdm}
        chain.append("mux")
    for i, (length, mis) in enumerate(spans):
        blocks[f"fib{i}"] = {"type": "fibre", "length_km": length, "loss_db_per_km": loss, "misalignment": mis,
                             "seed": 100 + i}
        chain.append(f"fib{i}")
        if i == 0 and eve is not None:
            blocks["eve"] = eve
            chain.append("eve")
    if wdm is not None:
        blocks["demux"] = {"type": "wdm_demux"}
        chain.append("demux")
    chain.append("det")
    conns = [["prep.out", "laser.in"], ["prep.out", "mon.prep"], ["det.out", "mon.clicks"]]
    conns += [[f"{a}.out", f"{b}.in"] for a, b in zip(chain, chain[1:])]
    doc = {"flowgraph": name, "clock": {"rate_hz": 1.0e9}, "blocks": blocks, "connections": conns}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def run(path: str) -> tuple[dict, dict, object]:
    g = load_flowgraph(path)
    res = NodeRunner(g, "main").run(timeout_s=120)
    assert res.ok, res.failure
    return res.blocks["mon"], res.blocks, g


def expected(params: dict):
    model = LinkModel(params)
    r = model.evaluate()
    p = model.params
    out = {}
    for i, k in enumerate(CLASSES):
        d = r.detection[k]
        q, e = float(d.gain), float(d.qber)
        var = (float(d.wrong_only) + 0.25 * float(d.double)) / q - e * e if q > 0 else 0.25
        out[k] = (p.probabilities[i], q, e, max(var, 1e-12))
    return out, r


def z_scores(mon: dict, exp: dict) -> dict[str, tuple[float, float]]:
    S = mon["slots_seen"]
    z = {}
    for i, k in enumerate(CLASSES):
        pk, q, e, var = exp[k]
        m = S * pk * q
        n = mon["class_clicks"][i]
        zg = (n - m) / np.sqrt(m * (1 - pk * q))
        M = mon["class_matched"][i]
        zq = (mon["class_errors"][i] / M - e) / np.sqrt(var / M) if M else 0.0
        z[k] = (float(zg), float(zq))
    return z


def assert_agree(mon: dict, exp: dict, min_clicks: int = 1000) -> None:
    assert mon["class_clicks"][0] >= min_clicks, "too few signal clicks for a real test"
    z = z_scores(mon, exp)
    bad = {k: v for k, v in z.items() if abs(v[0]) > Z_MAX or abs(v[1]) > Z_MAX}
    assert not bad, f"MC vs closed form beyond {Z_MAX} sigma (gain z, qber z): {z}"


RAMAN_WDM = {"quantum_wavelength_nm": 1550.12, "grid": "dwdm", "adjacent_isolation_db": 100.0,
             "nonadjacent_isolation_db": 100.0,
             "classical_channels": [
                 {"name": "ul", "wavelength_nm": 1547.72, "launch_power_dbm": -10.0, "direction": "co"},
                 {"name": "dl", "wavelength_nm": 1552.52, "launch_power_dbm": -10.0, "direction": "counter"}]}

CASES = {
    # short link, preparation error and misalignment
    "short_5km": dict(slots=20_000_000, spans=((5.0, 0.01),), modulator={"state_prep_error": 0.005}),
    # long link: few clicks per slot, dark counts matter for decoy/vacuum
    "long_100km": dict(slots=200_000_000, frame=10_000_000, spans=((100.0, 0.015),)),
    # high dark count
    "dark_1e-4": dict(slots=20_000_000, spans=((50.0, 0.01),), detector={"dark_count_per_gate": 1e-4}),
    # strong Raman: C-band quantum beside C-band classical (co + counter), two spans, WDM losses
    "raman_cband": dict(slots=40_000_000, spans=((10.0, 0.01), (15.0, 0.0)), wdm=RAMAN_WDM),
    # InGaAs preset (dark count from the operating-point curve) with afterpulsing switched off
    "ingaas_no_afterpulse": dict(slots=20_000_000, spans=((30.0, 0.02),),
                                 detector={"preset": "ingaas_gated", "efficiency": 0.2,
                                           "afterpulse_probability": 0.0},
                                 prep={"basis_bias": 0.8}),
    # InGaAs preset WITH afterpulsing (stationary model: afterpulses land in gates of every class)
    "ingaas_afterpulse": dict(slots=20_000_000, spans=((30.0, 0.02),),
                              detector={"preset": "ingaas_gated", "efficiency": 0.25, "dead_time_ns": 0.0},
                              prep={"basis_bias": 0.8}),
    # O-band quantum beside C-band fronthaul through CWDM (ssmf loss curve), sub-unit Bob optics
    "oband_cwdm": dict(slots=20_000_000, loss="ssmf", spans=((20.0, 0.01),),
                       wdm={"quantum_wavelength_nm": 1310.0, "grid": "cwdm", "nonadjacent_isolation_db": 110.0,
                            "classical_channels": [
                                {"name": "ul", "wavelength_nm": 1550.0, "launch_power_dbm": 3.0, "direction": "co"},
                                {"name": "dl", "wavelength_nm": 1570.0, "launch_power_dbm": 3.0,
                                 "direction": "counter"}]},
                       detector={"bob_transmittance": 0.8, "efficiency": 0.25}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mc_agrees_with_closed_form(tmp_path, case):
    kw = dict(CASES[case])
    path = build(tmp_path, name=case, **kw)
    mon, blocks, g = run(path)
    exp, r = expected(closed_form_params(g))
    assert_agree(mon, exp)
    if case == "ingaas_no_afterpulse":  # the preset, not a default, set the dark count
        assert blocks["det"]["dark_count_per_gate"] == pytest.approx(1.2e-6, rel=1e-9)
    if case == "ingaas_afterpulse":  # afterpulses are a real part of the vacuum gain here
        assert blocks["det"]["afterpulses"] > 0.3 * mon["class_clicks"][2]
    if case == "raman_cband":
        # the case really is noise-dominated: noise photons are a large part of the vacuum and decoy gain
        assert float(r.noise_photons_per_gate) > 1e-3


def test_lazy_and_eager_paths_agree(tmp_path):
    """Laser materialise=true (every photon drawn at the AAU, thinned explicitly everywhere) vs lazy fields."""
    common = dict(slots=4_000_000, frame=1_000_000, spans=((5.0, 0.02), (5.0, 0.01)),
                  modulator={"state_prep_error": 0.01})
    lazy, _, g = run(build(tmp_path, name="lazy", **common))
    eager, blocks, _ = run(build(tmp_path, name="eager", laser={"materialise": True, "seed": 5},
                                 detector={"seed": 22}, **common))
    assert blocks["laser"]["photons_emitted"] > 1e6  # it really drew every photon at the laser
    exp, _ = expected(closed_form_params(g))
    assert_agree(lazy, exp)
    assert_agree(eager, exp)
    S = lazy["slots_seen"]
    for i, k in enumerate(CLASSES):  # two-sample comparison of the two paths
        a, b = lazy["class_clicks"][i], eager["class_clicks"][i]
        assert abs(a - b) / np.sqrt(a + b + 1) < Z_MAX, (k, a, b)
        ma, mb = lazy["class_matched"][i], eager["class_matched"][i]
        if min(ma, mb) < 20:  # vacuum: too few matched clicks for a QBER comparison at this size
            continue
        ea, eb = lazy["class_errors"][i] / ma, eager["class_errors"][i] / mb
        e = (lazy["class_errors"][i] + eager["class_errors"][i]) / (ma + mb)
        sd = np.sqrt(max(e * (1 - e), 1e-9) * (1 / ma + 1 / mb))
        assert abs(ea - eb) / sd < Z_MAX, (k, ea, eb)
    assert S == eager["slots_seen"]


@pytest.mark.parametrize("resend,fraction", [("single", 0.5), ("coherent", 1.0)])
def test_intercept_resend_matches_derived_closed_form(tmp_path, resend, fraction):
    eve = {"type": "intercept_resend", "fraction": fraction, "resend": resend, "resend_mu": 0.3, "seed": 3}
    path = build(tmp_path, name=f"eve_{resend}", slots=4_000_000, frame=1_000_000,
                 spans=((4.0, 0.01), (6.0, 0.02)), modulator={"state_prep_error": 0.01}, eve=eve)
    mon, blocks, g = run(path)
    p = parse_params(closed_form_params(g))
    det = p.detector
    t_eve = float(db_to_transmittance(0.2 * 4.0))
    t_bob = float(db_to_transmittance(0.2 * 6.0)) * det.bob_transmittance
    S = mon["slots_seen"]
    for i, k in enumerate(CLASSES):
        q, e = intercept_resend_closed_form(p.intensities[i], t_eve, t_bob, det.efficiency, det.dark_count_per_gate,
                                            0.0, fraction, 0.01, 0.02, 0.01, resend, 0.3)
        pk = p.probabilities[i]
        m = S * pk * q
        zg = (mon["class_clicks"][i] - m) / np.sqrt(m * (1 - pk * q))
        M = mon["class_matched"][i]
        # e(1-e) bounds the per-click variance; vacuum has too few clicks at this size for a QBER test
        zq = (mon["class_errors"][i] / M - e) / np.sqrt(e * (1 - e) / M) if M >= 20 else 0.0
        assert abs(zg) < Z_MAX and abs(zq) < Z_MAX, (k, zg, zq, q, e)
    # Eve is really there: the signal QBER is far above the no-Eve value
    no_eve = LinkModel(closed_form_params(g)).evaluate()
    assert mon["class_errors"][0] / mon["class_matched"][0] > float(no_eve.qber["signal"]) + 0.05
    assert blocks["eve"]["intercepted"] > 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # eta = 1 makes log1p(-eta) = -inf inside decoy.py (exact)
def test_intercept_resend_closed_form_textbook_limit():
    """Single photons, lossless, noiseless, full interception: 25 % QBER, gain 1."""
    q, e = intercept_resend_closed_form(50.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, resend="single")
    assert q == pytest.approx(1.0, abs=1e-12)
    assert e == pytest.approx(0.25, abs=1e-12)
