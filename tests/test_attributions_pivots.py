"""The "why is this token pivotal?" page: probe and pivot-token attributions at the position that predicts each pivot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lens_pivotal.attributions import explain_pivots, pivots_view

from test_attributions_token_attribution import random_probes


def test_each_row_is_explained_at_the_position_before_its_pivot(tiny_qwen3_model, synthetic_rows, tmp_path):
    probes = random_probes(tiny_qwen3_model)
    explanations = explain_pivots(tiny_qwen3_model, synthetic_rows, probes, n=2, layer=2, steps=3, progress=False)
    assert len(explanations) == 2
    tokenizer = tiny_qwen3_model.tokenizer
    for explanation in explanations:
        row, probe, pivot = explanation.row, explanation.probe, explanation.pivot
        assert probe.token_ids == pivot.token_ids and probe.position == len(probe.token_ids) - 1
        assert tokenizer.decode(probe.token_ids).endswith(row.pivot_context[-20:])
        assert pivot.target_label == f"log P({row.pivot_token!r})" and probe.target_label == "probe logit, block 2"
    page = pivots_view(explanations).save(tmp_path / "pivots.html").read_text(encoding="utf-8")
    assert page.count("prob_delta") == 2 and "probe: probe logit, block 2" in page


def test_bad_n_and_unmappable_rows_are_named(tiny_qwen3_model, synthetic_rows):
    probes = random_probes(tiny_qwen3_model)
    with pytest.raises(ValueError, match="n must be a positive int"):
        explain_pivots(tiny_qwen3_model, synthetic_rows, probes, n=0)
    broken = [replace(synthetic_rows[0], pivot_token_id=5)]
    with pytest.raises(ValueError, match="none of the 1 rows maps"):
        explain_pivots(tiny_qwen3_model, broken, probes, progress=False)
