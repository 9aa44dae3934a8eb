"""Probe figures: layer-wise metrics with bands, control task and best layer; PCA matching scikit-learn; t-SNE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from lens_pivotal.probes import ProbeSettings, train_probes
from lens_pivotal.probes.plots import plot_layer_metrics, plot_projection, project_2d
from lens_pivotal.viz import save_figure


@pytest.fixture(scope="module")
def probes():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 2
    acts = torch.randn(4, 120, 16, generator=generator)
    acts[2, :, 0] += 3 * labels
    types = (torch.arange(120) // 3).tolist()
    return train_probes(acts, labels, groups=[str(i // 6) for i in range(120)], settings=ProbeSettings(l2=0.1, n_bootstrap=50),
                        control_types=types)


def test_layer_metrics_figure(probes, tmp_path):
    figure = plot_layer_metrics(probes)
    axis = figure.axes[0]
    labels = [line.get_label() for line in axis.get_lines()]
    assert labels == [
        "AUROC", "AUPRC", "balanced accuracy", "F1", "AUROC, control task (token types)", "CV AUROC, training problems",
        "best layer by CV (2)",
    ]  # fmt: skip
    assert list(axis.get_lines()[0].get_ydata()) == pytest.approx(probes.metrics.values["auroc"].tolist())
    assert list(axis.get_lines()[5].get_ydata()) == pytest.approx(probes.config.cv_auroc)
    assert len(axis.collections) == 4  # one confidence band per metric
    assert save_figure(figure, tmp_path / "m.png").stat().st_size > 10_000


def test_layer_metrics_figure_shows_baselines_and_probe_plus_uncertainty():
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(120) % 2
    acts = torch.randn(2, 120, 8, generator=generator)
    baselines = {"entropy": labels + torch.randn(120, generator=generator), "position": torch.rand(120, generator=generator)}
    probes = train_probes(acts, labels, groups=[str(i // 6) for i in range(120)], baselines=baselines,
                          settings=ProbeSettings(l2=0.1, n_bootstrap=50))
    axis = plot_layer_metrics(probes, metrics=("auroc",)).axes[0]
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert float(lines["AUROC, entropy baseline (no probe)"].get_ydata()[0]) == probes.baseline_metrics["entropy"]["auroc"]
    assert list(lines["AUROC, probe + entropy"].get_ydata()) == pytest.approx(probes.with_uncertainty["auroc"])


def test_pca_matches_sklearn_up_to_sign():
    acts = torch.randn(50, 8) @ torch.randn(8, 8)
    ours = project_2d(acts).numpy()
    expected = PCA(2).fit_transform(acts.double().numpy())
    assert np.allclose(np.abs(ours), np.abs(expected), atol=1e-4)


def test_projection_panels_and_tsne():
    acts, labels = torch.randn(40, 8), torch.arange(40) % 2
    assert len(plot_projection(acts, labels).axes) == 1
    figure = plot_projection(acts, labels, torch.rand(40), method="tsne")
    assert len(figure.axes) == 3  # label panel, score panel, colour bar
    expected = TSNE(2, perplexity=13.0, random_state=0, init="pca").fit_transform(acts.double().numpy())
    assert np.allclose(project_2d(acts, method="tsne").numpy(), expected, atol=1e-4)
    with pytest.raises(ValueError, match="'pca' or 'tsne'"):
        project_2d(acts, method="umap")
    with pytest.raises(ValueError, match=r"\[n_rows >= 3, d_model\]"):
        project_2d(acts[:2])
