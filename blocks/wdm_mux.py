"""WDM multiplexer (AAU): declares the channel plan, applies one insertion-loss pass to the quantum channel.

Channel plan and datasheet defaults: ``qkdflow.physics.wdm`` (CWDM ITU-T G.694.2 / DWDM G.694.1 grids; missing
fields take the grid's defaults; a classical channel within 0.75 grid spacing of the quantum channel is a load-time
error). The validated plan travels in ``meta["wdm"]`` so the fibre (Raman needs every classical channel's launch
power and wavelength) and the demux (insertion loss, isolation leakage) use the same plan, and
``meta["co_pump_t"]`` tracks each co-propagating channel's fibre transmittance so far (the pump left for the next
span's forward Raman and for the demux's leakage). ``launch_power_dbm`` is the classical power entering the fibre.
Insertion loss: quantum photons thinned with T = 10^(-insertion_loss_db/10) (closed form: T_mux).
Launch-power steps (faults: a transceiver swapped, an amplifier misset): ``power_steps``, a list of
{at_slot, channel, launch_power_dbm}; from slot ``at_slot`` on, that classical channel launches the new power. The
mux owns the plan, and the plan travels per frame, so a step is a new ``meta["wdm"]`` from the step's frame on: the
fibre (Raman) and the demux (leakage) rebuild their noise fields whenever the plan changes, with no coupling to the
step. A frame carries one plan, so every step slot must be a frame edge (the preparation's ``slots_per_frame``
dividing it; checked at start and per frame, one-line error): splitting frames here would misalign the photon
stream against the preparation stream that the link monitor and the sifting join with it. Then the noise photons
change exactly at the step slot. Counters: power_steps (steps taken effect); a log line per step.
The closed form (``qkdflow.physics.from_graph``) reads the initial plan.
Ports: in (PHOTON_DTYPE), out (PHOTON_DTYPE).
"""
from __future__ import annotations

import numpy as np

from qkdflow import photons
from qkdflow.physics.fibre import db_to_transmittance
from qkdflow.physics.wdm import plan_from_dict
from qkdflow.runtime.block import Block, BlockError, Stream
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
        Param("power_steps", list, [], doc="launch-power steps [{at_slot, channel, launch_power_dbm}] (faults); "
              "each at_slot a frame edge"),
    )
    inputs = (Stream("in", PHOTON_DTYPE),)
    outputs = (Stream("out", PHOTON_DTYPE),)

    def plan_dict(self) -> dict:
        """The WDM section as the closed form takes it (only fields the user gave; the grid fills the rest)."""
        d = {k: getattr(self, k) for k in PLAN_KEYS if getattr(self, k) is not None}
        d["classical_channels"] = [dict(ch) for ch in self.classical_channels]
        return d

    def _step_errors(self) -> list[str]:
        names = [ch.get("name") for ch in self.classical_channels if isinstance(ch, dict)]
        errs = []
        for i, st in enumerate(self.power_steps):
            where = f"power_steps[{i}]"
            if not isinstance(st, dict) or set(st) != {"at_slot", "channel", "launch_power_dbm"}:
                errs.append(f"{where}: must be {{at_slot, channel, launch_power_dbm}}, got {st!r}")
                continue
            a, p = st["at_slot"], st["launch_power_dbm"]
            if isinstance(a, bool) or not isinstance(a, int) or a < 0:
                errs.append(f"{where}.at_slot: must be an integer >= 0, got {a!r}")
            if st["channel"] not in names:
                errs.append(f"{where}.channel: no classical channel {st['channel']!r} "
                            f"(have: {', '.join(map(str, names))})")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or p != p or abs(p) == float("inf"):
                errs.append(f"{where}.launch_power_dbm: must be a number (dBm), got {p!r}")
        return errs

    def validate(self) -> list[str]:
        try:
            plan_from_dict(self.plan_dict())
        except ValueError as e:
            msg = str(e)
            return [msg[4:] if msg.startswith("wdm.") else msg]
        return self._step_errors()

    def _cfg_at(self, n_steps: int) -> dict:
        """The plan dict after the first ``n_steps`` power steps (in slot order)."""
        d = self.plan_dict()
        for st in self._steps[:n_steps]:
            for ch in d["classical_channels"]:
                if ch["name"] == st["channel"]:
                    ch["launch_power_dbm"] = float(st["launch_power_dbm"])
        return d

    def start(self) -> None:
        self._plan = plan_from_dict(self.plan_dict())
        self._steps = sorted((dict(s) for s in self.power_steps), key=lambda s: s["at_slot"])
        self._cfgs = [self._cfg_at(i) for i in range(len(self._steps) + 1)]  # plan after i steps
        self._plans = [plan_from_dict(c) for c in self._cfgs]
        self._applied = 0
        self._t = float(db_to_transmittance(self._plan.insertion_loss_db))
        self._rng = np.random.default_rng(self.seed)
        self.count("power_steps", 0)
        spf = self._frame_slots()
        bad = [s["at_slot"] for s in self._steps if spf and s["at_slot"] % spf]
        if bad:
            raise BlockError(f"power_steps: at_slot {bad[0]} is not a frame edge: make the preparation's "
                             f"slots_per_frame ({spf}) divide every step slot")

    def _frame_slots(self) -> int | None:
        """The preparation's slots_per_frame, if the flowgraph has exactly one preparation."""
        g = self.graph
        specs = [s for s in g.blocks.values() if s.type == "preparation"] if g is not None else []
        if len(specs) != 1:
            return None
        return int(specs[0].params.get("slots_per_frame", 1 << 20))

    def work(self, ins):
        f = ins["in"]
        mid = [s["at_slot"] for s in self._steps if f.start < s["at_slot"] < f.stop]
        if mid:
            raise BlockError(f"power step at slot {mid[0]} falls inside frame [{f.start}, {f.stop}): make the "
                             "preparation's slots_per_frame divide every step slot")
        while self._applied < len(self._steps) and self._steps[self._applied]["at_slot"] <= f.start:
            st = self._steps[self._applied]
            old = next(ch["launch_power_dbm"] for ch in self._cfgs[self._applied]["classical_channels"]
                       if ch["name"] == st["channel"])
            self._applied += 1
            self.count("power_steps")
            self.log(f"launch power step at slot {st['at_slot']} (frame from {f.start}): {st['channel']} "
                     f"{old:g} -> {float(st['launch_power_dbm']):g} dBm")
        cfg, plan = self._cfgs[self._applied], self._plans[self._applied]
        out = photons.attenuate(f, self._t, self._rng)
        co = {ch.name: 1.0 for ch in plan.classical_channels if ch.direction == "co"}
        return {"out": out.with_data(out.data, wdm=cfg, co_pump_t=co, fibre_km=0.0)}
