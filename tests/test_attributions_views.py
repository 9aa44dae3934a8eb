"""Attribution views: self-contained pages that show the tokens, mark the target position and load nothing from the
network."""

from __future__ import annotations

import json
import re

import pytest

import lens_pivotal as lp
from lens_pivotal.attributions import attributions_view, compare_methods

TEXT = "Sam has 12 apples and buys 7 more"
EXTERNAL = re.compile(r"""<script[^>]*\bsrc\s*=|https?://[^"'\s]*\.js""")


def saved(view, tmp_path, name):
    page = view.save(tmp_path / name).read_text(encoding="utf-8")
    assert not EXTERNAL.search(page), "a view must not load scripts from the network"
    assert not re.search(r"<div id=\"circuits-vis-[^\"]*\"[^>]*/>", page), "a self-closed mount div swallows what follows"
    return page


def test_one_attribution_view(tiny_qwen3_model, tmp_path):
    attribution = lp.attribute_tokens(tiny_qwen3_model, TEXT, target=11, position=4, steps=4)
    page = saved(attribution.view(), tmp_path, "one.html")
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
    page = saved(heads.view(k=3), tmp_path, "heads.html")
    assert "AttentionHeads" in page and "ColoredTokensMulti" in page
    block, head, _ = heads.top_heads(1)[0]
    assert f"L{block}H{head}" in page and "sum of parts" in page

