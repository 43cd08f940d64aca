"""Sweep figures: closed-form curves, Monte-Carlo points with error bars, the PLOB bound (matplotlib, Agg).

One PNG per sweep, one panel per requested output:
  key_rate  secure key rate per pulse, log axis: asymptotic, finite key (dash-dot, when configured) and the PLOB
            bound -log2(1 - eta) (Pirandola et al., Nat. Commun. 8, 15043 (2017); dotted) per series;
  qber      QBER of the signal class (%), linear axis;
  gain      gain of the signal class per pulse, log axis;
  noise     noise photons per gate at the detector inputs (Raman + leakage; log axis) with the dark count per gate.
Monte-Carlo points carry +-1 standard-error bars (link_monitor's estimators).
"""
from __future__ import annotations

from typing import Any

import numpy as np

PANELS = {
    "key_rate": ("secure key rate (bit/pulse)", True),
    "qber": ("QBER, signal class (%)", False),
    "gain": ("gain, signal class (per pulse)", True),
    "noise": ("noise photons per gate at detector", True),
}


def _pos(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return np.where(v > 0, v, np.nan)


def sweep_figure(path: str, curves: list[dict], mc: list[dict], outputs: list[str], labels: dict[str, Any],
                 dpi: int = 100) -> None:
    """Write the sweep figure to ``path``.

    curves: per series {label, color?, linestyle?, x, key_rate, finite_key_rate|None, plob, qber, gain, noise, dark}.
    mc: per point {series (index), x, key_rate, key_rate_se, qber, qber_se, gain, gain_se}.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(outputs)
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 3.8), dpi=dpi, squeeze=False)
    axes = axes[0]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, out in zip(axes, outputs):
        ylabel, log = PANELS[out]
        plob_drawn = False
        for i, c in enumerate(curves):
            color = c.get("color") or cycle[i % len(cycle)]
            ls = c.get("linestyle") or "-"
            x = np.asarray(c["x"], dtype=float)
            if out == "key_rate":
                ax.plot(x, _pos(c["key_rate"]), ls, color=color, label=c["label"])
                if c.get("finite_key_rate") is not None:
                    ax.plot(x, _pos(c["finite_key_rate"]), "-.", color=color, alpha=0.7, lw=1.2,
                            label=f"{c['label']} (finite key)")
                ax.plot(x, _pos(c["plob"]), ":", color=color, alpha=0.6, lw=1,
                        label=None if plob_drawn else "PLOB bound (dotted)")
                plob_drawn = True
            elif out == "qber":
                ax.plot(x, 100 * np.asarray(c["qber"]), ls, color=color, label=c["label"])
            elif out == "gain":
                ax.plot(x, _pos(c["gain"]), ls, color=color, label=c["label"])
            elif out == "noise":
                ax.plot(x, _pos(c["noise"]), ls, color=color, label=f"{c['label']}: Raman + leakage")
                ax.plot(x, np.full_like(x, float(c["dark"])), ls, color=color, alpha=0.35, lw=1,
                        label=f"{c['label']}: dark count")
            pts = [p for p in mc if p["series"] == i]
            if not pts or out == "noise":
                continue
            px = np.array([p["x"] for p in pts], dtype=float)
            if out == "key_rate":
                y, e = np.array([p["key_rate"] for p in pts]), np.array([p["key_rate_se"] for p in pts])
            elif out == "qber":
                y, e = 100 * np.array([p["qber"] for p in pts]), 100 * np.array([p["qber_se"] for p in pts])
            else:
                y, e = np.array([p["gain"] for p in pts]), np.array([p["gain_se"] for p in pts])
            ok = y > 0 if log else np.isfinite(y)
            ax.errorbar(px[ok], y[ok], yerr=e[ok], fmt="o", ms=4, color=color, capsize=3,
                        label=f"{c['label']} (Monte Carlo)" if out == outputs[0] else None)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(labels.get("x", "x"))
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6.5, loc="best")
    if labels.get("title"):
        fig.suptitle(labels["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
