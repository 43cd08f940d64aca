"""link_monitor: measured gains/QBERs agree with the closed form; its key rates are the physics package's formulas."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from blocks.link_monitor import measured_estimates
from qkdflow.physics.decoy import binary_entropy, gllp_key_rate, vacuum_weak_bounds
from qkdflow.physics.finite_key import expected_counts, lim2014_key_length
from qkdflow.physics.link import LinkModel
from qkdflow.runtime.graph import FlowgraphError, load_flowgraph
from qkdflow.runtime.scheduler import NodeRunner
from qkdflow.sweep import chain_flowgraph, inline_params

Z_MAX = 4.0
PARAMS = {"params": {"preparation": {"basis_bias": 0.7, "state_prep_error": 0.005,
                                     "probabilities": {"signal": 0.6, "decoy": 0.3, "vacuum": 0.1}},
                     "fibre": {"loss_db_per_km": 0.2, "misalignment": 0.015},
                     "detector": {"efficiency": 0.15, "dark_count_per_gate": 2e-5}},
          "path": "test", "x_key": "fibre.length_km"}


def _graph(tmp_path, slots: int, length_km: float, seed: int, **monitor) -> str:
    doc = chain_flowgraph(inline_params(PARAMS, {"label": "", "set": {}}, length_km), slots, seed)
    doc["blocks"]["monitor"].update(monitor)
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _run(path: str) -> dict:
    res = NodeRunner(load_flowgraph(path), "main").run(timeout_s=120)
    assert res.ok, res.failure
    return res.blocks["monitor"]


def test_measured_gain_and_qber_agree_with_closed_form(tmp_path):
    rep = _run(_graph(tmp_path, 20_000_000, 30.0, seed=11))
    cf = rep["closed_form"]
    assert cf is not None and cf["length_km"] == 30.0
    assert rep["slots"] == 20_000_000
    for i in range(3):
        zg = (rep["gain"][i] - cf["gain"][i]) / rep["gain_se"][i]
        zq = (rep["qber"][i] - cf["qber"][i]) / rep["qber_se"][i]
        assert abs(zg) < Z_MAX and abs(zq) < Z_MAX, (i, zg, zq)
    # sifted bits split by basis as basis_bias^2 : (1 - basis_bias)^2 (binomial, 4 sigma)
    z, x = rep["sifted_bits_z"], rep["sifted_bits_x"]
    frac = 0.49 / (0.49 + 0.09)
    assert abs(z / (z + x) - frac) < Z_MAX * np.sqrt(frac * (1 - frac) / (z + x))
    # the measured asymptotic rate is within its bootstrap error of the closed form's
    assert abs(rep["key_rate_per_pulse"] - cf["key_rate_per_pulse"]) < Z_MAX * rep["key_rate_se"]


def test_key_rates_are_the_physics_formulas_on_the_measured_counts(tmp_path):
    rep = _run(_graph(tmp_path, 4_000_000, 10.0, seed=5))
    c = rep["counts"]
    mu, p, q = np.array([0.5, 0.1, 0.0]), np.array([0.6, 0.3, 0.1]), 0.7
    g, e = np.array(rep["gain"]), np.array(rep["qber"])
    y1, e1 = vacuum_weak_bounds(mu[0], mu[1], g[0], g[1], e[1] * g[1], g[2])
    r = gllp_key_rate(mu[0], g[0], e[0], y1, e1, 1.16, p[0] * (q * q + (1 - q) ** 2))
    assert rep["key_rate_raw"] == pytest.approx(float(r), rel=1e-12)
    nx, nz = np.array(c["matched"][0], float), np.array(c["matched"][1], float)
    mz, mx = np.array(c["errors"][1]), np.array(c["errors"][0])
    lam = 1.16 * nx.sum() * binary_entropy(mx.sum() / nx.sum())
    fk = lim2014_key_length(nx, nz, mz, mu, p, 1e-10, 1e-15, lam)
    assert rep["finite_key_bits"] == float(fk.length)
    assert rep["finite_key_rate_bps"] == pytest.approx(float(fk.length) / (4_000_000 / 1e9), rel=1e-12)
    assert rep["key_rate_bps"] == pytest.approx(rep["key_rate_per_pulse"] * 1e9, rel=1e-12)


@pytest.mark.parametrize("length_km", [5.0, 60.0])
def test_expected_counts_reproduce_the_closed_form_key_rates(length_km):
    """Fed the closed form's expected counts, the monitor's estimators return the closed form's rates exactly."""
    params = inline_params(PARAMS, {"label": "", "set": {}}, length_km)
    n = 1e11
    model = LinkModel(params)
    r = model.evaluate(n_pulses=n)
    pp = model.params
    gains = np.array([float(r.gain[k]) for k in ("signal", "decoy", "vacuum")])
    errs = np.array([float(r.detection[k].error) for k in ("signal", "decoy", "vacuum")])
    nx, nz, mz, mx = expected_counts(n, pp.probabilities, pp.basis_bias, gains, errs)
    counts = {"slots": n, "clicks": n * pp.probabilities * gains, "matched": [nx, nz], "errors": [mx, mz],
              "wrong_only": np.zeros(3), "doubles": np.zeros(3)}
    m = measured_estimates(counts, pp.intensities, pp.probabilities, pp.basis_bias, pp.rate_hz)
    assert m["key_rate_raw"] == pytest.approx(float(r.key_rate_raw), rel=1e-9)
    assert m["finite_key_length_real"] == pytest.approx(float(r.finite.length_real), rel=1e-9)
    assert m["qber"][0] == pytest.approx(float(r.qber["signal"]), rel=1e-12)


def test_table_and_files(tmp_path, capsys):
    out = tmp_path / "out"
    rep = _run(_graph(tmp_path, 2_000_000, 10.0, seed=3, output_dir=str(out), table="stderr", plots=True))
    err = capsys.readouterr().err
    assert "asymptotic (GLLP" in err and "finite key (Lim 2014" in err and "signal" in err
    for suffix in (".json", ".csv", "_link.png", "_keyrate.png"):
        assert os.path.getsize(out / f"monitor{suffix}") > 0
    saved = json.loads((out / "monitor.json").read_text())
    assert saved["gain"] == rep["gain"]
    rows = (out / "monitor.csv").read_text().splitlines()
    assert rows[0].startswith("class,intensity,pulses_expected,clicks,gain,gain_se,gain_closed_form,qber")
    assert [r.split(",")[0] for r in rows[1:]] == ["signal", "decoy", "vacuum"]


def test_bad_table_parameter_is_a_load_error(tmp_path):
    with pytest.raises(FlowgraphError, match="table"):
        load_flowgraph(_graph(tmp_path, 1000, 1.0, seed=1, table="printer"))


def test_fronthaul_flowgraph_loads_and_matches_its_closed_form_noise():
    from qkdflow.physics.from_graph import closed_form_params

    g = load_flowgraph(os.path.join(os.path.dirname(__file__), "..", "flowgraphs", "fronthaul.yaml"))
    assert set(g.nodes) == {"aau", "du"} and g.blocks["monitor"].node == "du"
    r = LinkModel(closed_form_params(g)).evaluate()
    # the extra isolation filter keeps noise (Raman + leakage) within ~10x the dark count: key at 20 km
    assert float(r.noise_photons_per_gate) < 10 * float(r.dark_count_per_gate) / 0.2
    assert float(r.key_rate_per_pulse) > 0
