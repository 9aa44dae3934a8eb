"""Matplotlib figures of PatchScope results: decoding curves against the baselines, attribute heatmaps.

Figures are built with the object API (no pyplot state, no backend switching): they display in Jupyter
and save with :func:`lens_pivotal.viz.save_figure` anywhere.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from lens_pivotal.patchscope.attributes import AttributeResult
from lens_pivotal.patchscope.decoding import DecodingResult

LABELS = {"patchscope": "PatchScope (identity)", "logit_lens": "logit lens", "affine": "affine lens"}


def plot_decoding(result: DecodingResult, *, title: str | None = None) -> Figure:
    """Precision@1 and surprisal per source layer, one line per method."""
    figure = Figure(figsize=(11, 4))
    precision_axis, surprisal_axis = figure.subplots(1, 2)
    for method, values in result.precision_at_1.items():
        precision_axis.plot(result.layers, values.tolist(), marker="o", markersize=3, label=LABELS.get(method, method))
    for method, values in result.surprisal.items():
        surprisal_axis.plot(result.layers, values.tolist(), marker="o", markersize=3, label=LABELS.get(method, method))
    precision_axis.set(xlabel="source layer ℓ", ylabel="Precision@1", ylim=(-0.02, 1.02), title="Precision@1 (higher is better)")
    surprisal_axis.set(xlabel="source layer ℓ", ylabel="surprisal (nats)", title="Surprisal (lower is better)")
    for axis in (precision_axis, surprisal_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title or f"Next-token decoding over {len(result.prompts)} held-out prompts")
    figure.tight_layout()
    return figure


def plot_attribute_heatmap(result: AttributeResult, *, given_plain_correct: bool = False) -> Figure:
    """Accuracy over (source layer ℓ, target layer ℓ*), optionally only on samples the model knows."""
    accuracy = result.accuracy_given_plain_correct if given_plain_correct else result.accuracy
    figure = Figure(figsize=(2.5 + 0.35 * len(result.target_layers), 1.5 + 0.35 * len(result.source_layers)))
    axis = figure.subplots()
    image = axis.imshow(accuracy.numpy(), vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
    axis.set_xticks(range(len(result.target_layers)), result.target_layers)
    axis.set_yticks(range(len(result.source_layers)), result.source_layers)
    axis.set(xlabel="target layer ℓ*", ylabel="source layer ℓ")
    subset = f", {int(result.plain_correct.sum())} known samples" if given_plain_correct else f", {len(result.subjects)} samples"
    axis.set_title(f"{result.relation}: accuracy{subset}")
    figure.colorbar(image, ax=axis, label="accuracy")
    figure.tight_layout()
    return figure

