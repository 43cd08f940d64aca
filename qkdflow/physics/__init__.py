"""Closed-form physical layer of decoy-state BB84 over passive-WDM fibre (AAU = Alice, DU = Bob).

This is the model the Monte-Carlo blocks must reproduce (gain and QBER of every intensity class within 4 sigma).
Everything below is per pulse slot; one slot = one detector gate.

Alice (preparation)
    Intensity class k in {signal, decoy, vacuum} with probability p_k; phase-randomised weak coherent pulse, photon
    number n ~ Poisson(mu_k). Basis Z (key basis) with probability basis_bias, else X; uniformly random bit.
    State-preparation error e_prep is PER PULSE: with probability e_prep the whole pulse (all its photons) is
    prepared in the state orthogonal to the intended one (same basis, flipped bit).
Channel (quantum path)
    T = T_f x T_mux x T_demux x bob_transmittance,  T_f = 10^(-loss_db_per_km L/10),
    T_mux = T_demux = 10^(-insertion_loss_db/10). Each photon survives independently with probability T
    (binomial thinning). Misalignment e_mis is PER PHOTON: each surviving photon independently ends in the
    orthogonal state with probability e_mis (for a coherent state this is exactly a fixed polarisation/phase
    rotation with sin^2 = e_mis: the two output ports receive independent Poissons).
Noise
    Unpolarised noise photons at Bob's detector inputs: Poisson per gate with mean n_noise = sum over classical
    channels of Raman forward (co-propagating), Raman backward (counter-propagating) and in-band leakage
    (``wdm.noise_budget``; already includes demux insertion loss and bob_transmittance). Each noise photon goes to
    either detector of the chosen basis with probability 1/2, independently, in either basis.
Bob (measurement)
    Active basis choice, Z with probability basis_bias. Two identical detectors; each photon reaching a detector is
    detected with probability eta_d = efficiency; each detector has an independent dark count with probability
    p_dc = dark_count_per_gate per gate. A detector clicks if >= 1 photon is detected or it has a dark count.
    Detection event = at least one click. A double click is assigned a uniformly random bit (squashing), i.e. an
    error with probability 1/2 in matched bases. No dead time in the closed form (the Monte-Carlo agreement runs
    use dead_time_ns = 0). Afterpulsing, when p_ap > 0, is Lim et al. PRA 89, 022307 (2014)'s approximation:
    gain -> gain (1 + p_ap), error probability -> error + p_ap gain / 2 (not a slot-level model; MC agreement
    tests use p_ap = 0).
Exact results (decoy.detection_probabilities), matched bases, prep correct:
    lambda_c = eta_d T mu (1 - e_mis) + eta_d n_noise/2,  lambda_w = eta_d T mu e_mis + eta_d n_noise/2
    s_c = (1 - p_dc) e^{-lambda_c},  s_w = (1 - p_dc) e^{-lambda_w}   (P(detector silent); independent)
    Q_k = 1 - s_c s_w,   E_k Q_k = 1/2 [1 - s_c s_w + (1 - 2 e_prep)(s_c - s_w)]
    (the e_prep average swaps s_c and s_w for flipped pulses). Q_k does not depend on the basis match; with mismatched
    bases lambda_c = lambda_w = eta_d T mu/2 + eta_d n_noise/2. With e_prep = 0 Q_k is the union form of MQZL
    Eq. (10), Q = 1 - (1 - Y0) e^{-eta mu}, Y0 = 1 - (1 - p_dc)^2 e^{-eta_d n_noise}, eta = eta_d T.
    Sifted key-basis detections per pulse of class k: basis_bias^2 p_k Q_k.

Modules
    fibre        G.652.D attenuation curve (datasheet anchors), transmittance
    raman        SpRS cross-section (GNPy spectral model / Kumar 2015 literature calibration), fwd/bwd power
    wdm          channel plan, adjacency, isolation leakage, per-channel noise budget
    detector     DetectorParams, InGaAs operating-point curve (Comandar 2015 anchors), SNSPD preset
    decoy        exact gains/QBER and n-photon yields, MQZL Eq. 10/11 additive form, vacuum+weak (Eq. 34/37) and
                 two-decoy bounds, GLLP rate
    finite_key   Lim 2014 Eqs. 1-5 and a constrained optimiser
    bounds       PLOB -log2(1 - eta)
    link         parameter parsing/validation, LinkModel.evaluate (vectorised over length_km), max_distance_km,
                 finite-key optimisation
"""
from .bounds import plob_bound
from .decoy import (binary_entropy, detection_probabilities, gllp_key_rate, mqzl_gain_qber, mqzl_single_photon,
                    photon_number_yield, two_decoy_bounds, vacuum_weak_bounds)
from .detector import DetectorParams, ingaas_operating_point
from .finite_key import lim2014_key_length
from .link import LinkModel, LinkResult, evaluate, max_distance_km, optimise_finite_key, parse_params

__all__ = ["plob_bound", "binary_entropy", "detection_probabilities", "gllp_key_rate", "mqzl_gain_qber",
           "mqzl_single_photon", "photon_number_yield", "two_decoy_bounds", "vacuum_weak_bounds", "DetectorParams",
           "ingaas_operating_point", "lim2014_key_length", "LinkModel", "LinkResult", "evaluate", "max_distance_km",
           "optimise_finite_key", "parse_params"]
