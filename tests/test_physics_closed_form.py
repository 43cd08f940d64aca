"""Closed-form physical layer: limits, identities, an independent slot-level simulation, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qkdflow.physics import raman
from qkdflow.physics.bounds import plob_bound
from qkdflow.physics.decoy import (binary_entropy, detection_probabilities, photon_number_yield, two_decoy_bounds,
                                   vacuum_weak_bounds)
from qkdflow.physics.detector import INGAAS_GATED, detector_from_dict, ingaas_operating_point
from qkdflow.physics.fibre import alpha_per_km, ssmf_attenuation_db_per_km
from qkdflow.physics.link import LinkModel, evaluate, max_distance_km, parse_params
from qkdflow.physics.wdm import plan_from_dict

DET = dict(efficiency=0.2, dark_count_per_gate=1e-5)


# ----------------------------------------------------------------------------------------------- exact detection

def test_gain_is_mqzl_union_form_without_prep_error():
    mu = np.array([0.0, 0.1, 0.5, 2.0])[:, None]
    T = np.logspace(-6, 0, 7)[None, :]
    for n_noise in (0.0, 3e-3):
        d = detection_probabilities(mu, T, 0.2, 1e-5, n_noise, misalignment=0.03)
        y0 = 1 - (1 - 1e-5) ** 2 * math.exp(-0.2 * n_noise)
        np.testing.assert_allclose(d.gain, 1 - (1 - y0) * np.exp(-0.2 * T * mu), rtol=1e-9)  # ref. rounds at ~1e-11


def test_qber_tends_to_combined_flip_probability_at_low_signal_without_noise():
    for e_mis, e_prep in [(0.01, 0.0), (0.0, 0.02), (0.03, 0.05)]:
        d = detection_probabilities(1e-7, 1.0, 1.0, 0.0, 0.0, e_mis, e_prep)
        e_d = e_prep * (1 - e_mis) + e_mis * (1 - e_prep)
        assert d.qber == pytest.approx(e_d, rel=1e-5)


def test_double_clicks_raise_qber_above_misalignment_at_high_signal():
    # At eta mu ~ 1 both detectors fire often; squashing assigns those a random bit.
    d = detection_probabilities(2.0, 1.0, 1.0, 0.0, 0.0, 0.05)
    assert d.qber > 0.05
    assert d.correct_only + d.wrong_only + d.double == pytest.approx(d.gain, rel=1e-12)


def test_vacuum_and_pure_noise_give_half_qber_and_gain_is_basis_independent():
    d = detection_probabilities(0.0, 0.5, 0.2, 1e-4, 1e-2, 0.02, 0.01)
    assert d.qber == pytest.approx(0.5)
    m = detection_probabilities(0.4, 0.3, 0.2, 1e-4, 1e-2, 0.02, matched=True)
    x = detection_probabilities(0.4, 0.3, 0.2, 1e-4, 1e-2, 0.02, matched=False)
    assert m.gain == pytest.approx(x.gain, rel=1e-14)


def test_photon_number_yields_sum_to_the_gain_and_error():
    mu, kw = 0.6, dict(transmittance=0.07, efficiency=0.3, dark_count_per_gate=2e-5, noise_photons_per_gate=4e-3,
                       misalignment=0.02, state_prep_error=0.01, afterpulse_probability=0.03)
    n = np.arange(0, 80)
    y, e = photon_number_yield(n, **kw)
    pn = np.exp(-mu + n * math.log(mu) - np.array([math.lgamma(k + 1) for k in n]))
    d = detection_probabilities(mu, **kw)
    assert np.sum(pn * y) == pytest.approx(d.gain, rel=1e-12)
    assert np.sum(pn * y * e) == pytest.approx(d.error, rel=1e-12)


def test_afterpulse_is_lim2014_approximation():
    base = detection_probabilities(0.5, 0.01, 0.1, 6e-7, 0.0, 5e-3)
    ap = detection_probabilities(0.5, 0.01, 0.1, 6e-7, 0.0, 5e-3, afterpulse_probability=0.04)
    assert ap.gain == pytest.approx(base.gain * 1.04)
    assert ap.error == pytest.approx(base.error + 0.04 * base.gain / 2)


def test_independent_slot_simulation_agrees_within_four_sigma():
    """A direct per-slot simulation of the documented model (photons, per-pulse prep flip, per-photon misalignment,
    unpolarised noise, dark counts, squashing) must match the closed form for every intensity class."""
    rng = np.random.default_rng(12345)
    n_slots = 400_000
    T, eta_d, p_dc, n_noise, e_mis, e_prep = 0.3, 0.5, 2e-3, 0.02, 0.04, 0.03
    for mu in (0.6, 0.15, 0.0):
        photons = rng.poisson(mu, n_slots)
        arrived = rng.binomial(photons, T)
        detected = rng.binomial(arrived, eta_d)
        wrong_sig = rng.binomial(detected, e_mis)
        right_sig = detected - wrong_sig
        flip = rng.random(n_slots) < e_prep                      # whole pulse prepared orthogonal
        right_sig, wrong_sig = np.where(flip, wrong_sig, right_sig), np.where(flip, right_sig, wrong_sig)
        noise = rng.binomial(rng.poisson(n_noise, n_slots), eta_d)
        noise_right = rng.binomial(noise, 0.5)
        click_r = (right_sig + noise_right > 0) | (rng.random(n_slots) < p_dc)
        click_w = (wrong_sig + noise - noise_right > 0) | (rng.random(n_slots) < p_dc)
        det = click_r | click_w
        both = click_r & click_w
        err = (click_w & ~click_r) | (both & (rng.random(n_slots) < 0.5))
        d = detection_probabilities(mu, T, eta_d, p_dc, n_noise, e_mis, e_prep)
        g = det.mean()
        assert abs(g - d.gain) < 4 * math.sqrt(d.gain * (1 - d.gain) / n_slots)
        n_det = det.sum()
        q = err.sum() / n_det
        assert abs(q - d.qber) < 4 * math.sqrt(d.qber * (1 - d.qber) / n_det)


# ----------------------------------------------------------------------------------------------- decoy bounds

@pytest.mark.parametrize("noise,e_prep,vac", [(0.0, 0.0, 0.0), (5e-3, 0.01, 0.0), (1e-3, 0.0, 2e-4)])
def test_decoy_bounds_are_conservative(noise, e_prep, vac):
    L = np.linspace(0, 150, 31)
    p = parse_params({"preparation": {"intensities": {"signal": 0.5, "decoy": 0.1, "vacuum": vac},
                                      "state_prep_error": e_prep},
                      "fibre": {"loss_db_per_km": 0.2, "misalignment": 0.02},
                      "detector": {"efficiency": 0.15, "dark_count_per_gate": 1e-6}})
    m = LinkModel(p)
    r = m.evaluate(L)
    assert np.all(r.y1_lower <= r.y1_true * (1 + 1e-12))
    assert np.all(r.e1_upper >= r.e1_true * (1 - 1e-12))
    assert np.all(r.key_rate_raw <= r.key_rate_infinite_decoy_raw + 1e-18)


def test_two_decoy_bounds_reduce_to_vacuum_weak_with_zero_second_decoy():
    kw = dict(transmittance=0.02, efficiency=0.3, dark_count_per_gate=1e-6, misalignment=0.01)
    ds = {m: detection_probabilities(m, **kw) for m in (0.5, 0.1, 0.0)}
    y1a, e1a = vacuum_weak_bounds(0.5, 0.1, ds[0.5].gain, ds[0.1].gain, ds[0.1].error, ds[0.0].gain)
    _, y1b, e1b = two_decoy_bounds(0.5, 0.1, 0.0, ds[0.5].gain, ds[0.1].gain, ds[0.0].gain, ds[0.1].error,
                                   ds[0.0].error)
    assert y1a == pytest.approx(y1b, rel=1e-10)
    assert e1a == pytest.approx(e1b, rel=1e-10)


def test_plob_exceeds_every_decoy_rate():
    for det in ({"efficiency": 0.9, "dark_count_per_gate": 1e-9},
                {"efficiency": 0.1, "dark_count_per_gate": 1e-5, "bob_transmittance": 0.5}):
        r = evaluate({"preparation": {"basis_bias": 0.99}, "detector": det}, length_km=np.linspace(0, 300, 61))
        assert np.all(r.key_rate_infinite_decoy_per_pulse < r.plob_per_pulse)
        assert np.all(r.key_rate_per_pulse < r.plob_per_pulse)
    assert plob_bound(0.063) == pytest.approx(0.094, abs=1e-3)  # physics.md Sec. 6 sanity example


# ----------------------------------------------------------------------------------------------- Raman / WDM

def test_raman_general_forms_reduce_to_equal_alpha_forms():
    L = np.array([0.5, 10.0, 25.0, 80.0])
    a = alpha_per_km(0.2)
    f = raman.raman_forward_power_w(1e-3, 3e-9, 0.6, L, a, a)
    b = raman.raman_backward_power_w(1e-3, 3e-9, 0.6, L, a, a)
    np.testing.assert_allclose(f, 1e-3 * 3e-9 * 0.6 * L * np.exp(-a * L), rtol=1e-12)
    np.testing.assert_allclose(b, 1e-3 * np.exp(-a * L) * 3e-9 * 0.6 * np.sinh(a * L) / a, rtol=1e-12)
    np.testing.assert_allclose(b / f, np.sinh(a * L) / (a * L), rtol=1e-12)
    # physics.md Sec. 3.1: 1.04 at 10 km, 1.14 at 20 km (0.2 dB/km)
    assert float(np.sinh(a * 10) / (a * 10)) == pytest.approx(1.04, abs=0.005)
    # nearly equal alphas: continuous with the equal-alpha limit
    f2 = raman.raman_forward_power_w(1e-3, 3e-9, 0.6, L, a * (1 + 1e-9), a)
    np.testing.assert_allclose(f2, f, rtol=1e-6)


def test_raman_general_forward_matches_numerical_integral():
    ac, aq, L = alpha_per_km(0.2), alpha_per_km(0.33), 17.0
    z = np.linspace(0, L, 200001)
    fwd = np.trapezoid(np.exp(-ac * z) * np.exp(-aq * (L - z)), z)
    bwd = np.trapezoid(np.exp(-ac * z) * np.exp(-aq * z), z)
    assert raman.raman_forward_power_w(1.0, 1.0, 1.0, L, ac, aq) == pytest.approx(fwd, rel=1e-8)
    assert raman.raman_backward_power_w(1.0, 1.0, 1.0, L, ac, aq) == pytest.approx(bwd, rel=1e-8)


@pytest.mark.parametrize("q,c,rho", [(1530, 1550, 6.2e-9), (1551.72, 1550.12, 4.3e-9), (1570, 1550, 8.6e-9),
                                     (1650, 1550, 1.2e-8), (1310, 1550, 1.7e-12), (1550.12, 1310, 3.6e-10),
                                     (1550, 1351, 3.7e-10)])
def test_spectral_cross_section_matches_reference_table(q, c, rho):
    # physics.md Sec. 3.2 table (2 significant figures) -> 5 % tolerance
    assert float(raman.raman_cross_section_spectral(q, c)) == pytest.approx(rho, rel=0.05)


def test_literature_model_is_calibrated_to_kumar_beta():
    assert float(raman.raman_cross_section(1531.12, 1550.12)) == pytest.approx(3e-9, rel=1e-12)
    # anti-Stokes O-band quantum channel is orders of magnitude quieter than C/C coexistence
    assert raman.raman_cross_section(1310, 1550) < 1e-3 * raman.raman_cross_section(1531.12, 1550.12)


def test_worked_example_photons_per_gate():
    # physics.md Sec. 3.1 worked example: Q 1310 / C 1550, 13 nm, 0 dBm, 10 km, T_B 0.5, 1 ns: 4.1e-4 fwd, 4.3e-4 bwd
    rho = raman.raman_cross_section_spectral(1310, 1550)
    aq, ac = alpha_per_km(0.33), alpha_per_km(0.2)
    f = raman.photons_per_gate(raman.raman_forward_power_w(1e-3, rho, 13, 10, ac, aq) * 0.5, 1310, 1.0)
    b = raman.photons_per_gate(raman.raman_backward_power_w(1e-3, rho, 13, 10, ac, aq) * 0.5, 1310, 1.0)
    assert float(f) == pytest.approx(4.1e-4, rel=0.1)
    assert float(b) == pytest.approx(4.3e-4, rel=0.1)


def test_noise_budget_directions_and_leakage():
    wdm = {"quantum_wavelength_nm": 1550.12, "grid": "dwdm", "insertion_loss_db": 1.0,
           "adjacent_isolation_db": 100.0, "nonadjacent_isolation_db": 120.0, "return_loss_db": 50.0,
           "classical_channels": [
               {"name": "up", "wavelength_nm": 1550.92, "launch_power_dbm": -10, "direction": "co"},
               {"name": "down", "wavelength_nm": 1552.52, "launch_power_dbm": -10, "direction": "counter"}]}
    plan = plan_from_dict(wdm)
    assert plan.adjacent().tolist() == [True, False]
    r = evaluate({"wdm": wdm, "fibre": {"loss_db_per_km": 0.2}}, length_km=np.array([10.0, 20.0]))
    nb = r.noise
    assert np.all(nb.raman_forward[0] > 0) and np.all(nb.raman_backward[0] == 0)
    assert np.all(nb.raman_backward[1] > 0) and np.all(nb.raman_forward[1] == 0)
    # co-propagating leakage: P_out x isolation at the classical photon energy, independent recomputation
    loss_c = ssmf_attenuation_db_per_km(1550.92)
    p_w = 1e-4 * 10 ** (-loss_c * 10 / 10) * 1e-10
    expected = p_w / (6.62607015e-34 * 299792458 / 1550.92e-9) * 1e-9
    assert nb.leakage[0, 0] == pytest.approx(expected, rel=1e-9)
    assert nb.leakage[1, 0] == pytest.approx(1e-4 * 1e-5 * 1e-12 / (6.62607015e-34 * 299792458 / 1552.52e-9)
                                             * 1e-9, rel=1e-9)
    assert np.allclose(r.noise_photons_per_gate, nb.total)
    quiet = evaluate({"fibre": {"loss_db_per_km": 0.2}}, length_km=np.array([10.0, 20.0]))
    assert np.all(r.qber["signal"] > quiet.qber["signal"])


# ----------------------------------------------------------------------------------------------- detectors

def test_ingaas_curve_reproduces_its_anchor_points():
    dark, ap = ingaas_operating_point(np.array([0.50, 0.55, 0.10]))
    assert ap[0] == pytest.approx(0.07, rel=1e-9)      # Comandar 2015: 50 % / 7 %
    assert ap[1] == pytest.approx(0.102, rel=1e-9)     # Comandar 2015: 55 % / 10.2 %
    assert dark[2] == pytest.approx(6e-7, rel=1e-12)   # Lim 2014 / Walenta 2012: 10 % / 6e-7
    assert np.all(np.diff(ingaas_operating_point(np.linspace(0.05, 0.55, 11))[1]) > 0)
    d_fast, _ = ingaas_operating_point(0.3, dark_bias_scale=0.5)
    assert d_fast > ingaas_operating_point(0.3)[0]
    with pytest.raises(ValueError, match="detector.efficiency"):
        ingaas_operating_point(INGAAS_GATED.eta_abs + 0.01)


def test_ingaas_preset_makes_qber_rise_with_efficiency():
    qbers = []
    for eff in (0.1, 0.3, 0.5):
        r = evaluate({"detector": {"preset": "ingaas_gated", "efficiency": eff}}, length_km=np.array([20.0]))
        qbers.append(r.qber["signal"][0])
    assert qbers[0] < qbers[1] < qbers[2]
    snspd = detector_from_dict({"preset": "snspd"})
    assert snspd.efficiency == 0.93 and snspd.afterpulse_probability == 0.0


# ----------------------------------------------------------------------------------------------- link / finite key

def test_vectorised_evaluate_equals_scalar_calls():
    L = np.array([0.0, 7.0, 33.0, 120.0])
    m = LinkModel({"postprocessing": {"n_x": 1e8}})
    r = m.evaluate(L)
    for i, x in enumerate(L):
        s = m.evaluate(x)
        assert s.key_rate_raw == pytest.approx(r.key_rate_raw[i], rel=1e-12)
        assert s.finite_key_rate_per_pulse == pytest.approx(r.finite_key_rate_per_pulse[i], rel=1e-12, abs=1e-30)


def test_max_distance_brackets_the_sign_change():
    m = LinkModel({"fibre": {"loss_db_per_km": 0.2}})
    d = max_distance_km(m)
    assert 50 < d < 300
    assert m.evaluate(d - 0.5).key_rate_raw > 0 > m.evaluate(d + 0.5).key_rate_raw
    assert max_distance_km(m, "infinite_decoy") >= d


def test_finite_key_tends_to_its_asymptotic_limit():
    """As N -> inf, Lim 2014 -> q^2 [tau0 Y0^L + tau1 Y1^L (1 - h(e1^U)) - f sum_k p_k Q_k h(E)] with the MQZL
    two-decoy bounds on (mu1, mu2, mu3) -- an independent route through decoy.two_decoy_bounds."""
    params = {"preparation": {"intensities": {"signal": 0.5, "decoy": 0.1, "vacuum": 2e-4}, "basis_bias": 0.8},
              "fibre": {"loss_db_per_km": 0.2, "misalignment": 5e-3}}
    m = LinkModel(params)
    p = m.params
    L = 40.0
    rates = [float(m.evaluate(L, n_pulses=n).finite.length_real / n) for n in (1e9, 1e11, 1e13, 1e20)]
    assert rates[0] < rates[1] < rates[2] < rates[3]
    r = m.evaluate(L)
    mu1, mu2, mu3 = p.intensities
    q = [r.gain[k] for k in ("signal", "decoy", "vacuum")]
    e = [r.detection[k].error for k in ("signal", "decoy", "vacuum")]
    y0, y1, e1 = two_decoy_bounds(mu1, mu2, mu3, q[0], q[1], q[2], e[1], e[2])
    w = p.probabilities * np.exp(-p.intensities)
    tau0, tau1 = w.sum(), (w * p.intensities).sum()
    qtot = np.dot(p.probabilities, q)
    etot = np.dot(p.probabilities, e) / qtot
    asym = p.basis_bias**2 * (tau0 * y0 + tau1 * y1 * (1 - binary_entropy(e1))
                              - p.ec_efficiency * qtot * binary_entropy(etot))
    assert rates[3] == pytest.approx(float(asym), rel=1e-3)


# ----------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("params,match", [
    ({"fibre": {"length_km": -3}}, r"fibre\.length_km: must be >= 0, got -3"),
    ({"detector": {"efficiency": 1.2}}, r"detector\.efficiency: must be in \[0, 1\]"),
    ({"detector": {"bob_transmittance": -0.1}}, r"detector\.bob_transmittance"),
    ({"preparation": {"probabilities": {"signal": 0.8, "decoy": 0.2, "vacuum": 0.1}}},
     r"preparation\.probabilities: must sum to 1"),
    ({"preparation": {"intensities": {"signal": 0.1, "decoy": 0.5, "vacuum": 0.0}}}, r"preparation\.intensities"),
    ({"wdm": {"quantum_wavelength_nm": 1550.12, "classical_channels": [
        {"wavelength_nm": 1550.12, "launch_power_dbm": 0, "direction": "co"}]}},
     r"wdm\.classical_channels\[0\]\.wavelength_nm: within one dwdm grid spacing"),
    ({"wdm": {"grid": "cwdm", "quantum_wavelength_nm": 1550, "classical_channels": [
        {"wavelength_nm": 1560, "launch_power_dbm": 0, "direction": "co"}]}},
     r"wdm\.classical_channels\[0\]\.wavelength_nm: within one cwdm"),
    ({"wdm": {"quantum_wavelength_nm": 1700}}, r"wdm\.quantum_wavelength_nm: outside the attenuation model range"),
    ({"wdm": {"classical_channels": [{"wavelength_nm": 1310, "launch_power_dbm": 0, "direction": "sideways"}]}},
     r"direction"),
    ({"fibre": {"lenght_km": 3}}, r"fibre\.lenght_km: unknown field"),
    ({"fibre": {"raman_model": "magic"}}, r"fibre\.raman_model"),
    ({"detector": {"preset": "pmt"}}, r"detector\.preset"),
])
def test_bad_parameters_raise_value_error_naming_the_field(params, match):
    with pytest.raises(ValueError, match=match):
        parse_params(params)


def test_negative_length_array_rejected_at_evaluate():
    with pytest.raises(ValueError, match=r"fibre\.length_km: must be >= 0, got -1"):
        evaluate({}, length_km=np.array([1.0, -1.0]))
