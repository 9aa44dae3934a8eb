"""Attribution figures: one bar per token and method up to the target position, one cell per head."""

from __future__ import annotations

import pytest

import lens_pivotal as lp
from lens_pivotal.attributions import compare_methods, plot_head_attributions, plot_token_attributions

TEXT = "Sam has 12 apples and buys 7 more"


def test_token_bars_and_head_map(tiny_qwen3_model, tmp_path):
    attributions = compare_methods(tiny_qwen3_model, TEXT, methods=("input_x_gradient", "occlusion"), target=11, position=4)
    figure = plot_token_attributions(attributions)
    bars = figure.axes[0].patches
    assert len(bars) == 2 * 5 and [bar.get_height() for bar in bars[:5]] == pytest.approx(attributions[0].scores[:5].tolist())
    assert lp.save_figure(figure, tmp_path / "tokens.png").stat().st_size > 0
    heads = lp.head_attributions(tiny_qwen3_model, TEXT, target=11, position=4)
    image = plot_head_attributions(heads).axes[0].images[0]
    assert image.get_array().shape == tuple(heads.head_totals.shape)
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_token_attributions([])
