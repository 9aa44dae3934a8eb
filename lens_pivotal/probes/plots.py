"""Matplotlib figures of probes: layer-wise metrics with bootstrap bands and the control task, and 2-D
projections of activations coloured by label and by probe score. Save them with
:func:`lens_pivotal.viz.save_figure`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from lens_pivotal.probes.layer_probes import LayerProbes

METRIC_NAMES = {"auroc": "AUROC", "auprc": "AUPRC", "balanced_accuracy": "balanced accuracy", "f1": "F1", "accuracy": "accuracy"}


def plot_layer_metrics(probes: LayerProbes, metrics: Sequence[str] = ("auroc", "auprc", "balanced_accuracy", "f1")) -> Figure:
    """Held-out metrics per layer with their bootstrap intervals, the control's AUROC, the baselines, probe + uncertainty,
    the cross-validated AUROC on the training problems, and the best layer (chosen by it) marked."""
    result = probes.metrics
    x = list(range(probes.n_layers))
    figure = Figure(figsize=(10, 4))
    axis = figure.subplots()
    for name in metrics:
        line = axis.plot(x, result.values[name].tolist(), marker="o", markersize=3, label=METRIC_NAMES.get(name, name))[0]
        axis.fill_between(x, result.low[name].tolist(), result.high[name].tolist(), color=line.get_color(), alpha=0.15)
    if probes.config.control_task_auroc is not None:
        axis.plot(x, probes.config.control_task_auroc, linestyle="--", color="grey", label="AUROC, control task (token types)")
    if probes.config.cv_auroc is not None:
        axis.plot(x, probes.config.cv_auroc, linestyle=":", marker=".", color="black", label="CV AUROC, training problems")
    if probes.with_uncertainty is not None:
        combined = probes.with_uncertainty
        label = f"AUROC, probe + {' + '.join(combined['features'])}"
        line = axis.plot(x, combined["auroc"], marker="s", markersize=2, label=label)[0]
        axis.fill_between(x, combined["auroc_low"], combined["auroc_high"], color=line.get_color(), alpha=0.1)
    for name, baseline in probes.baseline_metrics.items():
        line = axis.axhline(baseline["auroc"], linestyle="-.", linewidth=1, label=f"AUROC, {name} baseline (no probe)")
        axis.axhspan(baseline["auroc_low"], baseline["auroc_high"], color=line.get_color(), alpha=0.06)
    best = probes.slot(probes.best_layer)
    axis.axvline(best, color="black", alpha=0.4, linestyle=":", label=f"best layer by CV ({probes.layer_labels[best]})")
    axis.set_xticks(x, probes.layer_labels, fontsize=7)
    axis.set(xlabel="layer (block)", ylabel="held-out score", ylim=(0, 1.02))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    config = probes.config
    axis.set_title(
        f"{Path(config.model_name).name}: pivotal-token probes on {config.n_heldout} held-out rows "
        f"({len(config.heldout_groups)} groups), {result.confidence:.0%} bootstrap bands", fontsize=10,
    )
    figure.tight_layout()
    return figure


def plot_projection(
    acts: Float[Tensor, "n_rows d_model"],
    labels: Sequence[int] | Tensor,
    scores: Float[Tensor, " n_rows"] | None = None,
    *,
    method: str = "pca",
    title: str = "",
    seed: int = 0,
) -> Figure:
    """Activations of one layer in 2-D (PCA, or t-SNE with scikit-learn), coloured by label and, if given, by score."""
    points = project_2d(acts, method=method, seed=seed)
    labels = torch.as_tensor(labels).float()
    panels = 1 if scores is None else 2
    figure = Figure(figsize=(5 * panels, 4.2))
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for value, name, color in ((0, "other", "tab:blue"), (1, "pivotal next", "tab:red")):
        chosen = labels == value
        axes[0].scatter(points[chosen, 0], points[chosen, 1], s=10, alpha=0.7, color=color, label=name)
    axes[0].legend(fontsize=8)
    axes[0].set_title("by label", fontsize=10)
    if scores is not None:
        image = axes[1].scatter(points[:, 0], points[:, 1], s=10, c=torch.as_tensor(scores).tolist(), cmap="coolwarm", vmin=0, vmax=1)
        axes[1].set_title("by probe score", fontsize=10)
        figure.colorbar(image, ax=axes[1], label="P(next token is pivotal)")
    for axis in axes:
        axis.set(xlabel=f"{method} 1", ylabel=f"{method} 2")
    figure.suptitle(title or f"{method.upper()} of activations", fontsize=11)
    figure.tight_layout()
    return figure


def project_2d(acts: Float[Tensor, "n_rows d_model"], *, method: str = "pca", seed: int = 0) -> Float[Tensor, "n_rows 2"]:
    """Two coordinates per row: the top-2 principal components, or a t-SNE embedding (needs scikit-learn)."""
    if acts.ndim != 2 or acts.shape[0] < 3:
        raise ValueError(f"acts must be [n_rows >= 3, d_model] for a projection, got {tuple(acts.shape)}")
    x = acts.double().cpu()
    if method == "pca":
        centred = x - x.mean(dim=0)
        _, _, components = torch.linalg.svd(centred, full_matrices=False)
        return (centred @ components[:2].T).float()
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise ImportError("t-SNE needs scikit-learn: pip install 'lens-pivotal[sklearn]'") from None
        perplexity = min(30.0, (x.shape[0] - 1) / 3)
        return torch.from_numpy(TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x.numpy())).float()
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
