"""Steering figures: success rate against the steering strength, with intervals, for each kind of setting."""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from lens_pivotal.steering.evaluation import NO_STEERING, RANDOM_PREFIX, SteeringReport, setting_name

KINDS = ("steered", "gated")


def plot_alpha_sweep(report: SteeringReport, alphas: Sequence[float], title: str = "") -> Figure:
    """Success rate (95% bootstrap band over problems) against alpha for steered, gated and their random controls,
    with no steering as a horizontal band."""
    names = {result.name for result in report.results}
    figure = Figure(figsize=(6.5, 4))
    axis = figure.subplots()
    none = report[NO_STEERING]
    axis.axhline(none.success, color="black", linewidth=1, label="no steering")
    axis.axhspan(none.low, none.high, color="black", alpha=0.08)
    for kind in KINDS:
        for prefix, style in (("", "-"), (RANDOM_PREFIX, ":")):
            chosen = [report[prefix + setting_name(kind, alpha)] for alpha in alphas if prefix + setting_name(kind, alpha) in names]
            if not chosen:
                continue
            x = [alpha for alpha in alphas if prefix + setting_name(kind, alpha) in names]
            line = axis.plot(x, [result.success for result in chosen], style, marker="o", markersize=3,
                             label=f"{'random direction, ' if prefix else ''}{kind}")[0]  # fmt: skip
            axis.fill_between(x, [r.low for r in chosen], [r.high for r in chosen], color=line.get_color(), alpha=0.12)
    axis.set(xlabel="alpha (x the layer's mean residual norm)", ylabel="success rate", ylim=(-0.02, 1.02))
    axis.set_title(title or f"{len(report.problems)} held-out problems x {report.samples} samples", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
