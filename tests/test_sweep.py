"""`qkdflow sweep`: curves = closed form, Monte-Carlo points within 4 sigma, CSV/PNG layout, one-line user errors."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from qkdflow.physics.from_graph import closed_form_params
from qkdflow.physics.link import LinkModel
from qkdflow.runtime.graph import load_flowgraph
from qkdflow.sweep import CSV_COLUMNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRONTHAUL = os.path.join(ROOT, "flowgraphs", "fronthaul.yaml")

TINY = {
    "sweep": "tiny",
    "params": {"preparation": {"basis_bias": 0.6}, "fibre": {"misalignment": 0.02},
               "detector": {"efficiency": 0.2, "dark_count_per_gate": 1e-5}},
    "x": {"fibre.length_km": {"from": 0, "to": 100, "step": 25}},
    "series": {"fibre.loss_db_per_km": [0.2, 0.3]},
    "outputs": ["key_rate", "qber", "noise"],
    "finite_key": {"n_pulses": 1e11},
    "mc": {"points": [20], "slots": 4_000_000, "seed": 9},
    "labels": {"title": "tiny", "x": "km", "series": ["a", "b"]},
}


def _cli(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkdflow.runtime.cli", "sweep", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def _write(tmp_path, doc: dict, name: str = "s.yaml") -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(p)


def test_tiny_sweep_writes_csv_png_and_mc_agrees(tmp_path):
    path = _write(tmp_path, TINY)
    r = _cli([path, "-o", str(tmp_path / "out"), "--jobs", "2"], str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(tmp_path / "out" / "tiny.png") > 0
    with open(tmp_path / "out" / "tiny.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    curve = [r for r in rows if r["kind"] == "curve"]
    mc = [r for r in rows if r["kind"] == "mc"]
    assert len(curve) == 2 * 5 and len(mc) == 2
    xs = np.array([0, 25, 50, 75, 100.0])
    for s, loss in enumerate((0.2, 0.3)):  # curves are the closed form, computed here independently
        res = LinkModel({"preparation": {"basis_bias": 0.6}, "fibre": {"misalignment": 0.02, "loss_db_per_km": loss},
                         "detector": {"efficiency": 0.2, "dark_count_per_gate": 1e-5}}).evaluate(xs, n_pulses=1e11)
        got = [r for r in curve if r["series"] == str(s)]
        assert [float(r["x"]) for r in got] == xs.tolist()
        np.testing.assert_allclose([float(r["key_rate_per_pulse"]) for r in got], res.key_rate_per_pulse, rtol=1e-6)
        np.testing.assert_allclose([float(r["finite_key_rate_per_pulse"]) for r in got], res.finite_key_rate_per_pulse,
                                   rtol=1e-6)
        np.testing.assert_allclose([float(r["qber_signal"]) for r in got], res.qber["signal"], rtol=1e-6)
        np.testing.assert_allclose([float(r["plob_per_pulse"]) for r in got], res.plob_per_pulse, rtol=1e-6)
        assert all(float(r["key_rate_per_pulse"]) <= float(r["plob_per_pulse"]) for r in got)
    for r in mc:  # Monte-Carlo points within 4 sigma of the curve (gain and QBER of the signal class)
        s = int(r["series"])
        loss = (0.2, 0.3)[s]
        res = LinkModel({"preparation": {"basis_bias": 0.6}, "fibre": {"misalignment": 0.02, "loss_db_per_km": loss},
                         "detector": {"efficiency": 0.2, "dark_count_per_gate": 1e-5}}).evaluate(20.0)
        zg = (float(r["gain_signal"]) - float(res.gain["signal"])) / float(r["gain_se"])
        zq = (float(r["qber_signal"]) - float(res.qber["signal"])) / float(r["qber_se"])
        assert abs(zg) < 4 and abs(zq) < 4, (r, zg, zq)
        assert float(r["cf_gain_signal"]) == pytest.approx(float(res.gain["signal"]), rel=1e-9)


def test_flowgraph_based_sweep_two_nodes(tmp_path):
    """A base flowgraph with two tcp nodes: curve from closed_form_params, MC points over private ipc endpoints."""
    doc = {"sweep": "fh", "flowgraph": FRONTHAUL, "overrides": ["monitor.ec_efficiency=1.1"],
           "x": {"fibre.length_km": [10, 30]}, "series": {"det.efficiency": [0.15, 0.2]},
           "mc": {"points": [10], "slots": 3_000_000, "series": [1]}, "outputs": ["key_rate"]}
    r = _cli([_write(tmp_path, doc), "-o", str(tmp_path), "--jobs", "2"], str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "fh.csv")))
    g = load_flowgraph(FRONTHAUL, ["det.efficiency=0.15", "fibre.length_km=30"])
    want = LinkModel(closed_form_params(g)).evaluate()
    got = [r for r in rows if r["kind"] == "curve" and r["series"] == "0" and r["x"] == "30"][0]
    assert float(got["key_rate_per_pulse"]) == pytest.approx(float(want.key_rate_per_pulse), rel=1e-6)
    (pt,) = [r for r in rows if r["kind"] == "mc"]
    assert pt["series"] == "1" and float(pt["gain_signal"]) > 0 and float(pt["gain_se"]) > 0


BAD = [
    ({"colour": "red"}, "colour"),
    ({"x": {"fibre.length_km": {"from": 0, "to": 10, "step": 0}}}, "x.fibre.length_km.step"),
    ({"x": {"fibre.length_km": {"from": 10, "to": 0, "step": 1}}}, "x.fibre.length_km.to"),
    ({"series": {"fibre.loss_db_per_km": 0.2}}, "series.fibre.loss_db_per_km"),
    ({"params": {"detector": {"efficiency": 2.0}}}, "detector.efficiency"),
    ({"params": {"fibres": {}}}, "params.fibres"),
    ({"outputs": ["keyrate"]}, "outputs"),
    ({"mc": {"points": [10], "slots": 10}}, "mc.slots"),
    ({"labels": {"series": ["only one"]}}, "labels.series"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[b[1] for b in BAD])
def test_bad_sweep_input_exit_2_one_line(tmp_path, change, field):
    doc = dict(TINY)
    doc.update(change)
    path = _write(tmp_path, doc)
    r = _cli([path, "--no-mc", "-o", str(tmp_path / "o")], str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "s.yaml" in lines[0] and field in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_missing_file_and_both_bases(tmp_path):
    r = _cli([str(tmp_path / "nope.yaml")], str(tmp_path))
    assert r.returncode == 2 and "nope.yaml" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    doc = dict(TINY, flowgraph=FRONTHAUL)
    r = _cli([_write(tmp_path, doc), "--no-mc"], str(tmp_path))
    assert r.returncode == 2 and "params/flowgraph" in r.stderr
