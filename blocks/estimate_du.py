"""Parameter estimation (DU): per-intensity counts, test-basis QBER, decoy bounds and a finite-key pre-check.

For each sifted block from sift_du (key basis Z = Lim's X; test basis X = Lim's Z, fully disclosed):
  * n_x[k]: key-basis detections of intensity class k (signal, decoy, vacuum); n_z[k], m_z[k]: test-basis
    detections and errors (Bob's squashed bit != Alice's disclosed bit) per class;
  * QBER: E = sum m_z / sum n_z over all classes (the observed test-basis error rate);
  * decoy bounds and length: Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Eqs. (1)-(5) via
    ``qkdflow.physics.finite_key.lim2014_key_length`` (vacuum + weak-decoy bounds s_X0, s_X1 (Eqs. 2-3), v_Z1
    (Eq. 4), phase error phi_X (Eq. 5)) with the *expected* EC leak lambda = ``ec_efficiency`` n_X h(E) (Lim Sec. IV).
The block is aborted (abort-and-regenerate: it is discarded at both ends and the next block is made) if
E > ``qber_threshold`` or the pre-check length is not positive; the notice travels to reconcile_du, which tells
reconcile_aau (the AAU stage holding the block). The final length is computed again in amplify_du with the leak
actually disclosed. Every result is logged with eps_sec and eps_cor.

Cascade/LDPC need a QBER estimate in (0, 1/2): ``qber_estimate`` = (m + 1)/(n + 2) over the test basis (the
posterior mean under a uniform prior; only sets block sizes / code rate, no security role).
Ports: sync in/out; key in (sift_du), key out (reconcile_du). No peer: estimation needs no message.
"""
from __future__ import annotations

import numpy as np

import qkdflow.physics.finite_key  # noqa: F401  main-thread import of protocol.key_length's lazy import (CPython 3.11.7
# concurrent-compile bug, see blocks/slot_assigner.py)

from qkdflow.distill.protocol import DuHalf, KeyBlock, binary_entropy, fmt_pct, key_length, sync_ports_in, \
    sync_ports_out
from qkdflow.runtime.block import BlockError, Message
from qkdflow.runtime.params import Param


class EstimateDu(DuHalf):
    """Parameter estimation on the DU: per-class gains/errors, QBER threshold and Lim 2014 length pre-check."""

    stage = ""
    params = (
        Param("qber_threshold", float, 0.11, doc="abort a block whose test-basis QBER exceeds this", low=0.0,
              high=0.5, low_open=True),
        Param("eps_sec", float, 1e-10, doc="secrecy parameter of the pre-check", low=0.0, high=1.0, low_open=True,
              high_open=True),
        Param("eps_cor", float, 1e-12, doc="correctness parameter of the pre-check", low=0.0, high=1.0,
              low_open=True, high_open=True),
        Param("ec_efficiency", float, 1.1, doc="f in the expected EC leak f n_X h(E) of the pre-check", low=1.0),
    )
    inputs = sync_ports_in() + (Message("key", kind="distill.key", optional=False, doc="from sift_du"),)
    outputs = sync_ports_out() + (Message("key", kind="distill.key", doc="to reconcile_du"),)

    def begin(self, blk: KeyBlock) -> None:
        ex, info = blk.extra, blk.info
        key_cls = np.asarray(ex["key_cls"], dtype=np.int64)
        test_cls = np.asarray(ex["test_cls"], dtype=np.int64)
        test_err = np.asarray(ex["test_err"], dtype=np.float64)
        if key_cls.size != blk.bits.size or test_err.size != test_cls.size:
            raise BlockError("estimate: sifted record sizes disagree")
        n_x = np.bincount(key_cls, minlength=3)[:3]
        n_z = np.bincount(test_cls, minlength=3)[:3]
        m_z = np.bincount(test_cls, weights=test_err, minlength=3)[:3]
        nz, mz = int(n_z.sum()), float(m_z.sum())
        qber = mz / nz if nz else 0.5
        src = info["source"]
        try:
            fk = key_length(n_x, n_z, m_z, src, self.eps_sec, self.eps_cor,
                            self.ec_efficiency * n_x.sum() * binary_entropy(qber))
        except ValueError as e:
            raise BlockError(f"estimate: {e}") from None
        length = float(fk.length_real)
        info.update(n_x=n_x.tolist(), n_z=n_z.tolist(), m_z=m_z.astype(int).tolist(), qber_test=qber,
                    qber_estimate=(mz + 1) / (nz + 2), phase_error=float(fk.phase_error), s_x0=float(fk.s_x0),
                    s_x1=float(fk.s_x1), l_estimate=length, eps_sec=self.eps_sec, eps_cor=self.eps_cor)
        self.log(f"block {blk.num}: n_X {int(n_x.sum())} (per class {n_x.tolist()}), test {nz}, QBER {fmt_pct(qber)},"
                 f" s_X1 >= {float(fk.s_x1):.0f}, phi_X <= {float(fk.phase_error):.4f}, l_est {length:.0f} bits"
                 f" (eps_sec {self.eps_sec:g}, eps_cor {self.eps_cor:g})")
        if qber > self.qber_threshold:
            self.abort(blk, f"QBER {fmt_pct(qber)} > {fmt_pct(self.qber_threshold)}", tell_peer=False)
        elif not length > 0:
            self.abort(blk, f"finite-key length {length:.0f} bits <= 0 (n_X {int(n_x.sum())}, QBER {fmt_pct(qber)},"
                            f" phi_X <= {float(fk.phase_error):.3f})", tell_peer=False)
        else:
            self.complete(blk, blk.bits)
