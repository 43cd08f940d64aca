"""WDM demultiplexer (DU): one insertion-loss pass, plus in-band leakage noise from finite isolation.

Uses the channel plan declared on the wdm_mux (``meta["wdm"]``). Model (``qkdflow.physics.wdm`` docstring, the
closed form this must reproduce): quantum photons and all noise so far thinned with T_demux = 10^(-IL/10); then for
every classical channel the power leaking from the common port into the quantum output port is
P_common 10^(-isolation/10) (isolation adjacent/non-adjacent by grid spacing, referred to the common-port input),
with P_common = launch x fibre transmittance at the classical wavelength for co-propagating channels
(``meta["co_pump_t"]``) and launch x 10^(-return_loss_db/10) for counter-propagating ones (near-end reflection).
The leaked light is an unpolarised Poisson noise field of flux P_leak lambda_c/(h c) photons per unit time (counted
with the classical photon energy); the detector multiplies by its gate width. Rayleigh backscatter and four-wave
mixing are not modelled (as the closed form).
Ports: in (PHOTON_DTYPE), out (PHOTON_DTYPE).
"""
from __future__ import annotations

import numpy as np
from scipy.constants import c as C_LIGHT, h as H_PLANCK

from qkdflow import photons
from qkdflow.physics.fibre import db_to_transmittance
from qkdflow.physics.wdm import plan_from_dict
from qkdflow.runtime.block import Block, BlockError, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import PHOTON_DTYPE


def photon_flux_per_ns(power_w: float, wavelength_nm: float) -> float:
    """Photons per ns of an optical power: P lambda / (h c) x 1e-9 s."""
    return power_w * wavelength_nm * 1e-9 / (H_PLANCK * C_LIGHT) * 1e-9


class WdmDemux(Block):
    """Passive WDM demux: insertion loss and isolation-leakage noise fields (plan from the wdm_mux)."""

    category = "optics"
    params = (Param("seed", int, 14, doc="RNG seed for thinning explicit photons", low=0),)
    inputs = (Stream("in", PHOTON_DTYPE),)
    outputs = (Stream("out", PHOTON_DTYPE),)

    def start(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._cfg = None

    def work(self, ins):
        f = ins["in"]
        cfg = f.meta.get("wdm")
        if cfg is None:
            raise BlockError("no channel plan in the frames: put a wdm_mux upstream")
        if cfg != self._cfg:
            self._cfg, self._plan = cfg, plan_from_dict(cfg)
        plan = self._plan
        out = photons.attenuate(f, float(db_to_transmittance(plan.insertion_loss_db)), self._rng)
        co_t = f.meta.get("co_pump_t", {})
        new = []
        iso = db_to_transmittance(plan.isolation_db()) if plan.classical_channels else []
        for ch, t_iso in zip(plan.classical_channels, iso):
            p_w = 1e-3 * 10.0 ** (ch.launch_power_dbm / 10.0)
            if ch.direction == "co":
                p_common = p_w * float(co_t.get(ch.name, 1.0))
            else:
                p_common = p_w * float(db_to_transmittance(plan.return_loss_db))
            flux = photon_flux_per_ns(p_common * float(t_iso), ch.wavelength_nm)
            if flux > 0:
                new.append(photons.noise_field(flux, origin=photons.ORIGIN_LEAKAGE, name=f"leakage:{ch.name}"))
        return {"out": photons.add_fields(out, new)}
