"""Faults on the link: fibre cut (blocks/fibre_cut.py), classical launch-power step (wdm_mux power_steps), link-monitor
alarms, and key distillation aborting under the noise step and committing after it (flowgraphs/faults.yaml)."""
from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest

from blocks.detector import Detector
from blocks.fibre import Fibre
from blocks.fibre_cut import FibreCut
from blocks.link_monitor import LinkMonitor
from blocks.wdm_demux import WdmDemux
from blocks.wdm_mux import WdmMux
from qkdflow import photons, prng
from qkdflow.physics.link import LinkModel
from qkdflow.runtime.block import BlockError, Frame
from qkdflow.runtime.graph import load_flowgraph
from qkdflow.runtime.scheduler import run_nodes_in_threads
from qkdflow.streams import CLICK_DTYPE, PHOTON_DTYPE, PREP_DTYPE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBS = [0.5, 0.3, 0.2]
MU = [0.6, 0.2, 0.0]


def started(cls, **kw):
    b = cls(cls.__name__.lower(), **kw)
    b.start()
    return b


def photon_frames(n_frames: int, frame_slots: int, t: float, noise_per_ns: float) -> list[Frame]:
    """Lazy frames: Alice's pulses (pending t) and an upstream noise field, as after a fibre span."""
    desc = prng.prep_descriptor(3, PROBS, 0.5)
    out = []
    for i in range(n_frames):
        fields = [photons.source_field(desc, MU, t=t), photons.noise_field(noise_per_ns, origin=photons.ORIGIN_RAMAN,
                                                                           name="raman_fwd:x")]
        out.append(Frame(i * frame_slots, (i + 1) * frame_slots, photons.empty_events(), [], {"fields": fields}))
    return out


def in_windows(slots: np.ndarray, windows: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros(slots.size, dtype=bool)
    for a, b in windows:
        m |= (slots >= a) & (slots < b)
    return m


# ---- fibre cut ------------------------------------------------------------------------------------
CUT = dict(cut_start_slot=2_500_000, cut_slots=2_000_000, repeats=2, repeat_every_slots=5_000_000)
WINDOWS = [(2_500_000, 4_500_000), (7_500_000, 9_500_000)]


def test_cut_windows_and_passthrough():
    cut = started(FibreCut, **CUT, gate_width_ns=1.0)
    assert [(a, b) for _, a, b in cut.windows(0, 10_000_000)] == WINDOWS
    assert cut.windows(4_500_000, 7_500_000) == [] and cut.windows(9_500_000, 20_000_000) == []
    f = photon_frames(1, 1_000_000, 0.5, 0.01)[0]  # [0, 1e6): no cut
    assert cut.work({"in": f})["out"] is f
    assert FibreCut("c", cut_slots=10, repeats=3, repeat_every_slots=5).validate()  # overlapping repeats refused


def test_cut_blocks_exactly_the_window_photons():
    """Drawn behind the cut, no photon lands inside a window (exact), outside the count is the Poisson mean."""
    t, noise, fs = 0.3, 0.02, 1_000_000
    cut = started(FibreCut, **CUT, gate_width_ns=1.0, seed=5)
    rng = np.random.default_rng(8)
    ev = [photons.materialise(cut.work({"in": f})["out"], rng).data for f in photon_frames(10, fs, t, noise)]
    ev = np.concatenate(ev)
    inside = in_windows(ev["slot"], WINDOWS)
    assert not inside.any()
    n_out = 10 * fs - sum(b - a for a, b in WINDOWS)
    mean = n_out * (float(np.dot(PROBS, MU)) * t + noise)
    assert abs(float(ev["n"].sum()) - mean) < 5 * math.sqrt(mean * 1.5)  # Poisson mixture: var <= 1.5 mean here
    assert cut.counters["slots_cut"] == 4_000_000
    assert cut.counters["cuts_started"] == 2 and cut.counters["cuts_ended"] == 2


def test_cut_clicks_are_dark_counts_only_in_the_window():
    """Through the detector: in the windows the click probability is the dark-count one, 1 - (1 - d)^2; outside
    it is the closed form 1 - (1 - d)^2 exp(-eta (mu_k t + noise)) averaged over classes (Monte Carlo within 4.5 sigma)."""
    t, noise, fs, d, eta = 0.3, 0.02, 1_000_000, 1e-3, 0.5
    cut = started(FibreCut, **CUT, gate_width_ns=1.0, seed=6)
    det = started(Detector, efficiency=eta, dark_count_per_gate=d, afterpulse_probability=0.0, dead_time_ns=0.0,
                  gate_width_ns=1.0, bob_transmittance=1.0, basis_bias=0.5, seed=9)
    clicks = np.concatenate([det.work({"in": cut.work({"in": f})["out"]})["out"].data["slot"]
                             for f in photon_frames(10, fs, t, noise)])
    inside = in_windows(clicks, WINDOWS)
    n_in = sum(b - a for a, b in WINDOWS)
    n_out = 10 * fs - n_in
    p_dark = 1 - (1 - d) ** 2
    p_out = float(np.dot(PROBS, [1 - (1 - d) ** 2 * math.exp(-eta * (m * t + noise)) for m in MU]))
    for n, slots, p in ((int(inside.sum()), n_in, p_dark), (int((~inside).sum()), n_out, p_out)):
        assert abs(n - slots * p) < 4.5 * math.sqrt(slots * p * (1 - p)), (n, slots * p)
    # without the cut the windows would see ~12x the dark-count rate: the test can fail
    assert p_out > 10 * p_dark


def test_cut_straddling_frame_needs_gate_width():
    cut = started(FibreCut, cut_start_slot=500, cut_slots=100)
    with pytest.raises(BlockError, match="gate_width_ns"):
        cut.work({"in": photon_frames(1, 1000, 0.3, 0.01)[0]})
    whole = started(FibreCut, cut_start_slot=0, cut_slots=1000)  # a whole frame needs no draw: O(1)
    out = whole.work({"in": photon_frames(1, 1000, 0.3, 0.01)[0]})["out"]
    assert all(f["t"] == 0.0 for f in photons.fields_of(out)) and out.data.size == 0


# ---- launch-power step ----------------------------------------------------------------------------
PLAN = dict(grid="cwdm", quantum_wavelength_nm=1530.0, adjacent_isolation_db=120.0, nonadjacent_isolation_db=120.0,
            filter_bandwidth_nm=1.0)
CHANNELS = [{"name": "uplink", "wavelength_nm": 1550.0, "launch_power_dbm": -20.0, "direction": "co"},
            {"name": "downlink", "wavelength_nm": 1570.0, "launch_power_dbm": -20.0, "direction": "counter"}]
DET = dict(efficiency=0.2, dark_count_per_gate=1e-6, afterpulse_probability=0.0, dead_time_ns=0.0, gate_width_ns=0.35,
           bob_transmittance=0.8)


def closed_form_background(uplink_dbm: float) -> float:
    """Closed-form background click probability per gate Y0 = 1 - (1 - d)^2 exp(-eta_d n_noise) at 20 km."""
    ch = copy.deepcopy(CHANNELS)
    ch[0]["launch_power_dbm"] = uplink_dbm
    p = {"clock": {"rate_hz": 1e9},
         "preparation": {"intensities": {"signal": 0.5, "decoy": 0.1, "vacuum": 0.0},
                         "probabilities": {"signal": 0.8, "decoy": 0.15, "vacuum": 0.05}, "basis_bias": 0.5},
         "fibre": {"misalignment": 0.0, "loss_db_per_km": "ssmf", "length_km": 20.0},
         "wdm": dict(PLAN, classical_channels=ch), "detector": DET}
    return float(LinkModel(p).evaluate().background_yield)


def test_power_step_changes_noise_clicks_to_closed_form():
    """Noise only (no pulses): clicks per slot before and after the uplink steps -20 -> 0 dBm at slot 4e7 equal the
    closed form's background yield for each launch power (Monte Carlo within 4.5 sigma)."""
    fs, n_frames, step = 10_000_000, 8, 40_000_000
    mux = started(WdmMux, **PLAN, classical_channels=CHANNELS,
                  power_steps=[{"at_slot": step, "channel": "uplink", "launch_power_dbm": 0.0}])
    fib = started(Fibre, length_km=20.0, loss_db_per_km="ssmf")
    dmx = started(WdmDemux)
    det = started(Detector, **DET, basis_bias=0.5, seed=4)
    counts = {False: 0, True: 0}
    for i in range(n_frames):
        f = Frame(i * fs, (i + 1) * fs, np.zeros(0, PHOTON_DTYPE), [], {"fields": []})
        c = det.work({"in": dmx.work({"in": fib.work({"in": mux.work({"in": f})["out"]})["out"]})["out"]})["out"]
        counts[f.start >= step] += c.data.size
    assert mux.counters["power_steps"] == 1
    half = fs * n_frames // 2
    for after, dbm in ((False, -20.0), (True, 0.0)):
        p = closed_form_background(dbm)
        assert abs(counts[after] - half * p) < 4.5 * math.sqrt(half * p), (dbm, counts[after], half * p)
    assert closed_form_background(0.0) > 20 * closed_form_background(-20.0)  # the step is visible


def test_power_step_inside_a_frame_is_refused():
    mux = started(WdmMux, **PLAN, classical_channels=CHANNELS,
                  power_steps=[{"at_slot": 150, "channel": "uplink", "launch_power_dbm": 0.0}])
    f = Frame(100, 200, np.zeros(0, PHOTON_DTYPE), [], {"fields": []})
    with pytest.raises(BlockError, match="inside frame"):
        mux.work({"in": f})
    bad = WdmMux("m", **PLAN, classical_channels=CHANNELS,
                 power_steps=[{"at_slot": 1, "channel": "nope", "launch_power_dbm": 0.0}, {"at_slot": 2}])
    errs = bad.validate()
    assert any("power_steps[0].channel" in e for e in errs) and any("power_steps[1]" in e for e in errs)


# ---- link monitor alarms --------------------------------------------------------------------------
def test_monitor_alarms_fire_and_clear():
    """Synthetic windows: healthy, cut (dark counts only), healthy, QBER 25 %, healthy."""
    desc = prng.prep_descriptor(11, [0.5, 0.3, 0.2], 0.5)
    mon = started(LinkMonitor, output_dir="", table="none", closed_form=False, alarm_window_slots=1_000_000,
                  expected_click_rate=1e-2, dark_click_rate=2e-6, min_matched_clicks=200)
    rng = np.random.default_rng(2)
    plan = [(1e-2, 0.02)] * 3 + [(2e-6, 0.02)] * 2 + [(1e-2, 0.02)] * 2 + [(1e-2, 0.25)] * 3 + [(1e-2, 0.02)] * 2
    fs = 1_000_000
    for i, (rate, e) in enumerate(plan):
        s0 = i * fs
        slots = np.unique(rng.integers(s0, s0 + fs, rng.poisson(rate * fs)))
        _, basis, bit = prng.prep_choices(desc, slots)
        val = bit ^ (rng.random(slots.size) < e)
        c = np.zeros(slots.size, CLICK_DTYPE)
        c["slot"], c["basis"], c["mask"] = slots, basis, (1 << val.astype(np.uint8)) << (2 * basis)
        prep = Frame(s0, s0 + fs, np.zeros(0, PREP_DTYPE), [], {"prep": desc, "intensities": [0.5, 0.1, 0.0]})
        mon.work({"prep": prep, "clicks": Frame(s0, s0 + fs, c)})
    mon.end()
    ev = [(a["kind"], a["state"], a["start_slot"]) for a in mon.report()["alarms"]["events"]]
    assert ev == [("click_collapse", "raised", 3 * fs), ("click_collapse", "cleared", 5 * fs),
                  ("qber_high", "raised", 7 * fs), ("qber_high", "cleared", 10 * fs)]
    assert mon.counters["alarm_click_collapse"] == mon.counters["clear_click_collapse"] == 1
    assert mon.counters["alarm_qber_high"] == mon.counters["clear_qber_high"] == 1
    assert mon.report()["alarms"]["active"] == [] and len(mon.report()["alarms"]["timeline"]) == len(plan)


# ---- end to end: flowgraphs/faults.yaml -----------------------------------------------------------
def test_faults_flowgraph_aborts_under_noise_and_recovers(tmp_path, ports):
    """The demo flowgraph, shortened: blocks sifted during the 0 dBm uplink abort (QBER > 11 %) at both ends;
    before and after the step blocks commit with identical keys; the monitor raises and clears both alarms."""
    base = ports(12)
    sa, sd = str(tmp_path / "a.sqlite"), str(tmp_path / "d.sqlite")
    g = load_flowgraph(os.path.join(ROOT, "flowgraphs", "faults.yaml"),
                       [f"nodes.aau.port={base}", f"nodes.du.port={base + 6}", f"store_a.store_path={sa}",
                        f"store_d.store_path={sd}", "monitor.output_dir=", "slots=520000000",
                        "cut_start=110000000", "cut_slots=20000000", "step_up=150000000", "step_down=270000000"])
    res = run_nodes_in_threads(g, timeout_s=120)
    assert res["aau"].ok and res["du"].ok, (res["aau"].failure, res["du"].failure)
    du, aau = res["du"].blocks, res["aau"].blocks
    blocks = du["store_d"]["report"]["blocks"] if "report" in du["store_d"] else du["store_d"]["blocks"]
    est = du["est_d"]
    assert est["blocks_aborted"] >= 2 and aau["store_a"]["blocks_aborted"] == du["store_d"]["blocks_aborted"]
    committed_last = [b["last_slot"] for b in blocks]
    assert any(s < 150_000_000 for s in committed_last)            # before the step
    assert any(b["first_slot"] >= 270_000_000 for b in blocks)     # recovery: committed after stepping back
    assert all(not (150_000_000 <= b["first_slot"] and b["last_slot"] < 270_000_000) for b in blocks)
    assert all(b["qber_test"] < 0.11 for b in blocks)
    mon = du["monitor"]
    assert mon["alarm_click_collapse"] == mon["clear_click_collapse"] == 1
    assert mon["alarm_qber_high"] == mon["clear_qber_high"] == 1
    assert aau["cut"]["slots_cut"] == 20_000_000 and aau["mux"]["power_steps"] == 2
