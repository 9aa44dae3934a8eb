"""The "why is this token pivotal?" page: probe and pivot-token attributions at the position that predicts each pivot."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch

from lens_pivotal.attributions import explain_pivots, pivots_view
from lens_pivotal.attributions.demo import attribution_demo, heldout_pivots
from lens_pivotal.attributions.pivots import pivot_contexts
from lens_pivotal.pts.problems import group_name
from lens_pivotal.pts.schema import load_shipped_pts

from conftest import checkpoint_tokenizer, hf_token_ids
from test_attributions_token_attribution import (
    chatml_kept,
    hand_gap,
    hf_embeddings,
    hf_log_prob,
    hf_pad_baseline,
    hf_probe_logit,
    random_probes,
)
from test_attributions_views import shown_gaps


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


@pytest.mark.slow
def test_demo_prints_and_shows_each_completeness_gap(family_models, tmp_path):
    """The demo's summary and page give each attribution's completeness gap; its values and gaps agree with plain HF
    and a hand-written Gauss-Legendre loop from a hand-built pad baseline (2 points: cheap, and far from complete)."""
    model, reference = family_models("embedded")
    first = next(row for row in load_shipped_pts() if row.is_positive)
    probes = random_probes(model)
    probes.config.best_layer, probes.config.metrics, probes.config.heldout_groups = 5, {}, [group_name(first.group_key)]
    summary = attribution_demo(model, probes.save(tmp_path / "probes"), tmp_path, steps=2)
    page = (tmp_path / "why_pivotal.html").read_text(encoding="utf-8")
    [(row, _)] = pivot_contexts(model, heldout_pivots(probes), 1)  # the row the demo explains; its ids from HF below
    ids = hf_token_ids(reference, row.pivot_context)
    pieces = [checkpoint_tokenizer(reference).decode([token]) for token in ids[0].tolist()]
    assert json.dumps(pieces[:-1] + [f"⟦{pieces[-1]}⟧"]) in page  # the page attributes this text, read at its end
    embeddings, baseline = hf_embeddings(reference, ids), hf_pad_baseline(reference, ids, chatml_kept(pieces))
    expected = []
    for label, function in (
        ("probe logit, block 5", hf_probe_logit(reference, ids, probes, 5)),
        (f"log P({row.pivot_token!r})", hf_log_prob(reference, ids, -1, row.pivot_token_id)),
    ):
        with torch.no_grad():
            values = (float(function(embeddings)[0]), float(function(baseline)[0]))
        expected.append(hand_gap(function, embeddings, baseline, 2))
        line = re.search(rf"{re.escape(label)} = (\S+) \(baseline (\S+)\); \S* ?completeness gap (\S+)%", summary)
        assert (float(line[1]), float(line[2])) == pytest.approx(values, abs=2e-3)
        assert float(line[3]) / 100 == pytest.approx(expected[-1], rel=1e-2, abs=1e-3)
    assert shown_gaps(page) == pytest.approx(expected * 2, rel=1e-2, abs=1e-3)  # the menu's labels, then the table
