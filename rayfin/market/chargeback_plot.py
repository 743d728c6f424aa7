"""`rayfin chargeback --plot FILE.png`: a desk chargeback as a picture (matplotlib, Agg backend).

Left: GPU-hours per desk, batch and serving stacked. Right: GPU-hours each desk borrowed and
lent. Rows such as `(unowned)` (GPUs no desk is guaranteed) appear as lenders only. The numbers
are the report's (`ChargebackReport`, by desk), so the picture and the table agree.
"""
from __future__ import annotations

from pathlib import Path

from rayfin.errors import ConfigError
from rayfin.market.chargeback import ChargebackReport, GroupBy


def plot_report(report: ChargebackReport, path: str | Path, currency: str = "") -> Path:
    """Write the two panels of a by-desk `report` to `path` (PNG, or any format matplotlib
    knows by the suffix). Returns the path."""
    if report.by is not GroupBy.DESK:
        raise ValueError("plot_report needs a report by desk")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib (or rayfin[dev])",
                          path="--plot") from None
    rows = list(report.rows)
    names = [r.key for r in rows]
    x = list(range(len(rows)))
    batch = [float(r.batch_gpu_h) for r in rows]
    serving = [float(r.serving_gpu_h) for r in rows]
    borrowed = [float(r.borrowed_gpu_h) for r in rows]
    lent = [float(r.lent_gpu_h) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(rows) + 4), 4.2))
    ax1.bar(x, batch, label="batch", color="#4C72B0")
    ax1.bar(x, serving, bottom=batch, label="serving", color="#DD8452")
    ax1.set_title("GPU-hours used")
    w = 0.4
    ax2.bar([i - w / 2 for i in x], borrowed, width=w, label="borrowed", color="#C44E52")
    ax2.bar([i + w / 2 for i in x], lent, width=w, label="lent", color="#55A868")
    ax2.set_title("GPU-hours borrowed and lent")
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right")
        ax.set_ylabel("GPU-hours")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    cost = f", cost {float(report.total.cost):,.2f} {currency}".rstrip()
    fig.suptitle(f"chargeback {report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC: "
                 f"{float(report.total.gpu_h):.2f} GPU-hours{cost}")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
