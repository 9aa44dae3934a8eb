"""Attribution views: self-contained pages that show the tokens, mark the target position and load nothing from the
network."""

from __future__ import annotations

import json
import re

import pytest

import lens_pivotal as lp
from lens_pivotal.attributions import attributions_view, compare_methods, head_attribution_view, token_attribution_view
from lens_pivotal.attributions.results import LARGE_DELTA

from conftest import hf_token_ids
from test_attributions_token_attribution import hand_gap, hf_embeddings, hf_log_prob, hf_pad_baseline

TEXT = "Sam has 12 apples and buys 7 more"
EXTERNAL = re.compile(r"""<script[^>]*\bsrc\s*=|https?://[^"'\s]*\.js""")


def saved(view, tmp_path, name):
    page = view.save(tmp_path / name).read_text(encoding="utf-8")
    assert not EXTERNAL.search(page), "a view must not load scripts from the network"
    assert not re.search(r"<div id=\"circuits-vis-[^\"]*\"[^>]*/>", page), "a self-closed mount div swallows what follows"
    return page


def test_one_attribution_view(tiny_qwen3_model, tmp_path):
    attribution = lp.attribute_tokens(tiny_qwen3_model, TEXT, target=11, position=4, steps=4)
    page = saved(token_attribution_view(attribution), tmp_path, "one.html")
    marked = [f"⟦{token}⟧" if index == 4 else token for index, token in enumerate(attribution.tokens)]
    assert json.dumps(marked) in page  # circuitsvis' props: the tokens, the target position marked
    assert "convergence delta" in page and attribution.target_label.replace("'", "&#x27;") in page


def test_side_by_side_view_needs_one_text(tiny_qwen3_model, tmp_path):
    attributions = compare_methods(tiny_qwen3_model, TEXT, target=11, position=4, steps=4)
    page = saved(attributions_view(attributions), tmp_path, "multi.html")
    for method in ("integrated_gradients", "input_x_gradient", "occlusion"):
        assert method in page
    other = lp.attribute_tokens(tiny_qwen3_model, TEXT + " today", target=11, position=4, method="occlusion")
    with pytest.raises(ValueError, match="attribution 1 is of another text"):
        attributions_view([attributions[0], other])
    with pytest.raises(ValueError, match="2 labels for 3 attributions"):
        attributions_view(attributions, ["a", "b"])


def test_head_view_shows_patterns_and_parts(tiny_qwen3_model, tmp_path):
    heads = lp.head_attributions(tiny_qwen3_model, TEXT, target=11, position=4)
    page = saved(head_attribution_view(heads, k=3), tmp_path, "heads.html")
    assert "AttentionHeads" in page and "ColoredTokensMulti" in page
    block, head, _ = heads.top_heads(1)[0]
    assert f"L{block}H{head}" in page and "sum of parts" in page



def shown_gaps(page: str) -> list[float]:
    """Every completeness gap a page shows, as a fraction."""
    return [float(percent) / 100 for percent in re.findall(r"completeness gap (\d+\.\d)%", page)]


@pytest.mark.parametrize("steps", [1, 8])
def test_views_show_the_completeness_gap_of_integrated_gradients(family_models, tmp_path, steps):
    model, reference = family_models("qwen3")
    ids = hf_token_ids(reference, TEXT)[:, :5]
    embeddings, baseline = hf_embeddings(reference, ids), hf_pad_baseline(reference, ids, [0])
    expected = hand_gap(hf_log_prob(reference, ids, -1, 11), embeddings, baseline, steps)
    attributions = compare_methods(model, TEXT, target=11, position=4, steps=steps)
    one = saved(token_attribution_view(attributions[0]), tmp_path, "one.html")
    multi = saved(attributions_view(attributions), tmp_path, "multi.html")
    for page in (one, multi):  # one: the heading and the table; multi: the method menu and the table
        assert shown_gaps(page) == pytest.approx([expected] * 2, rel=2e-3, abs=6e-4)
        assert ("completeness-gap large" in page) == (expected > LARGE_DELTA)
    assert (expected > LARGE_DELTA) == (steps == 1)
