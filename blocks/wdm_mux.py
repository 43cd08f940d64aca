"""WDM multiplexer (AAU): declares the channel plan, applies one insertion-loss pass to the quantum channel.

Channel plan and datasheet defaults: ``qkdflow.physics.wdm`` (CWDM ITU-T G.694.2 / DWDM G.694.1 grids; missing
fields take the grid's defaults; a classical channel within 0.75 grid spacing of the quantum channel is a load-time
error). The validated plan travels in ``meta["wdm"]`` so the fibre (Raman needs every classical channel's launch
power and wavelength) and the demux (insertion loss, isolation leakage) use the same plan, and
``meta["co_pump_t"]`` tracks each co-propagating channel's fibre transmittance so far (the pump left for the next
span's forward Raman and for the demux's leakage). ``launch_power_dbm`` is the classical power entering the fibre.
Insertion loss: quantum photons thinned with T = 10^(-insertion_loss_db/10) (closed form: T_mux).
Ports: in (PHOTON_DTYPE), out (PHOTON_DTYPE).
"""
from __future__ import annotations

import numpy as np

from qkdflow import photons
from qkdflow.physics.fibre import db_to_transmittance
from qkdflow.physics.wdm import plan_from_dict
from qkdflow.runtime.block import Block, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import PHOTON_DTYPE

PLAN_KEYS = ("quantum_wavelength_nm", "classical_channels", "grid", "insertion_loss_db", "adjacent_isolation_db",
             "nonadjacent_isolation_db", "filter_bandwidth_nm", "return_loss_db")


class WdmMux(Block):
    """Passive WDM mux: channel plan (travels in frame meta) and one insertion-loss pass."""

    category = "optics"
    params = (
        Param("quantum_wavelength_nm", float, 1550.12, unit="nm", doc="quantum channel wavelength", low=0.0,
              low_open=True),
        Param("classical_channels", list, [], doc="[{name, wavelength_nm, launch_power_dbm, direction: co|counter,"
              " loss_db_per_km?}]"),
        Param("grid", str, "dwdm", doc="channel grid", choices=("cwdm", "dwdm")),
        Param("insertion_loss_db", float, None, unit="dB", doc="per mux or demux pass (default: grid datasheet)",
              low=0.0),
        Param("adjacent_isolation_db", float, None, unit="dB", doc="demux isolation, adjacent channel", low=0.0),
        Param("nonadjacent_isolation_db", float, None, unit="dB", doc="demux isolation, non-adjacent", low=0.0),
        Param("filter_bandwidth_nm", float, None, unit="nm", doc="quantum port pass band (Raman)", low=0.0,
              low_open=True),
        Param("return_loss_db", float, None, unit="dB", doc="near-end return loss (counter channels' leakage)",
              low=0.0),
        Param("seed", int, 13, doc="RNG seed for thinning explicit photons", low=0),
    )
    inputs = (Stream("in", PHOTON_DTYPE),)
    outputs = (Stream("out", PHOTON_DTYPE),)

    def plan_dict(self) -> dict:
        """The WDM section as the closed form takes it (only fields the user gave; the grid fills the rest)."""
        d = {k: getattr(self, k) for k in PLAN_KEYS if getattr(self, k) is not None}
        d["classical_channels"] = [dict(ch) for ch in self.classical_channels]
        return d

    def validate(self) -> list[str]:
        try:
            plan_from_dict(self.plan_dict())
        except ValueError as e:
            msg = str(e)
            return [msg[4:] if msg.startswith("wdm.") else msg]
        return []

    def start(self) -> None:
        self._plan = plan_from_dict(self.plan_dict())
        self._cfg = self.plan_dict()
        self._t = float(db_to_transmittance(self._plan.insertion_loss_db))
        self._rng = np.random.default_rng(self.seed)

    def work(self, ins):
        f = ins["in"]
        out = photons.attenuate(f, self._t, self._rng)
        co = {ch.name: 1.0 for ch in self._plan.classical_channels if ch.direction == "co"}
        return {"out": out.with_data(out.data, wdm=self._cfg, co_pump_t=co, fibre_km=0.0)}
