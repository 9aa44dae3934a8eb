"""Matplotlib figures of attributions, for papers: token scores as bars (one or several methods), and the direct
contribution of every head as a block × head heat map. Save them with :func:`lens_pivotal.viz.save_figure`."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from lens_pivotal.attributions.results import HeadAttribution, TokenAttribution


def plot_token_attributions(attributions: Sequence[TokenAttribution], labels: Sequence[str] | None = None) -> Figure:
    """Grouped bars of each token's score up to the target position, one colour per attribution (same text)."""
    if not attributions:
        raise ValueError("attributions is empty: nothing to plot")
    first = attributions[0]
    labels = list(labels) if labels is not None else [f"{item.method}" for item in attributions]
    shown = first.position + 1
    x = np.arange(shown)
    width = 0.8 / len(attributions)
    figure = Figure(figsize=(max(6.0, 0.35 * shown), 3.6))
    axis = figure.subplots()
    for index, (item, label) in enumerate(zip(attributions, labels)):
        axis.bar(x + (index - (len(attributions) - 1) / 2) * width, item.scores[:shown].tolist(), width, label=label)
    axis.axhline(0, color="black", linewidth=0.6)
    axis.set_xticks(x, [repr(token)[1:-1] for token in first.tokens[:shown]], rotation=70, fontsize=7)
    axis.set(ylabel="attribution", title=f"{first.target_label} at position {first.position}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return figure


def plot_head_attributions(attribution: HeadAttribution) -> Figure:
    """Every head's direct contribution (block × head), on a diverging scale symmetric around 0."""
    totals = attribution.head_totals.numpy()
    bound = max(float(np.abs(totals).max()), 1e-12)
    figure = Figure(figsize=(max(4.0, 0.45 * totals.shape[1] + 2), max(3.0, 0.22 * totals.shape[0] + 1.5)))
    axis = figure.subplots()
    image = axis.imshow(totals, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    axis.set(xlabel="head", ylabel="block", title=f"Direct contribution to {attribution.target_label}")
    figure.colorbar(image, ax=axis, shrink=0.8)
    figure.tight_layout()
    return figure
