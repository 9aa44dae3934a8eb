"""Matplotlib figures: decoding curves per method and the attribute accuracy heatmap."""

from __future__ import annotations

import torch

from lens_pivotal.patchscope import plot_attribute_heatmap, plot_decoding
from lens_pivotal.patchscope.attributes import AttributeResult
from lens_pivotal.patchscope.decoding import DecodingResult
from lens_pivotal.viz import save_figure


def decoding_result() -> DecodingResult:
    hits = {"patchscope": torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]), "logit_lens": torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])}
    surprisals = {method: 5 * (1 - value) for method, value in hits.items()}
    return DecodingResult(
        layers=[0, 1, 2], target_layers=[0, 1, 2], prompts=["a", "b"], train_prompts=[], target_prompts=["t"],
        model_top_tokens=["x", "y"], top_tokens={m: [["x", "y"]] * 3 for m in hits}, hits=hits, surprisals=surprisals,
    )


def test_decoding_plot_draws_one_curve_per_method(tmp_path):
    figure = plot_decoding(decoding_result())
    precision_axis, surprisal_axis = figure.axes[:2]
    assert [line.get_label() for line in precision_axis.lines] == ["PatchScope (identity)", "logit lens"]
    assert list(precision_axis.lines[0].get_ydata()) == [0.5, 1.0, 1.0]
    assert list(surprisal_axis.lines[1].get_ydata()) == [5.0, 2.5, 0.0]
    path = save_figure(figure, tmp_path / "out" / "decoding.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["decoding.png"]


def test_attribute_heatmap_shows_accuracy_and_known_subset():
    correct = torch.tensor([[[True, False]], [[True, True]]])  # 2 samples, 1 source layer, 2 target layers
    result = AttributeResult(
        relation="r", target_prompt="x", source_layers=[3], target_layers=[1, 2], subjects=["s1", "s2"],
        objects=["o1", "o2"], generations=[[["", ""]], [["", ""]]], correct=correct,
        plain_generations=["", ""], plain_correct=torch.tensor([False, True]),
    )
    image = plot_attribute_heatmap(result).axes[0].images[0]
    assert image.get_array().tolist() == [[1.0, 0.5]]
    known = plot_attribute_heatmap(result, given_plain_correct=True)
    assert known.axes[0].images[0].get_array().tolist() == [[1.0, 1.0]]
    assert "1 known samples" in known.axes[0].get_title()
