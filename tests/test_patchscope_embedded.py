"""PatchScope on the real embedded SmolLM2-135M (30 blocks): the decoding curve's shape and known answers."""

from __future__ import annotations

import pytest

import lens_pivotal as lp
from lens_pivotal.patchscope import Patchscope, next_token_decoding, relation_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(embedded_dir):
    return lp.load_model(embedded_dir, device="cpu")


def test_decoding_curve_is_low_early_high_late_and_exact_at_the_last_layer(model):
    result = next_token_decoding(model, relation_prompts(40, seed=5), baselines=("logit_lens",), progress=False)
    precision = result.precision_at_1["patchscope"]
    assert precision[-1] == 1.0 and result.precision_at_1["logit_lens"][-1] == 1.0
    assert precision[:5].mean() < 0.35 and precision[-5:].mean() > 0.8
    assert precision[15:29].mean() > result.precision_at_1["logit_lens"][15:29].mean(), "above the logit lens in the upper half"
    assert result.surprisal["patchscope"][-5:].mean() < result.surprisal["patchscope"][:5].mean()


def test_affine_lens_is_exact_at_the_last_layer_and_beats_the_logit_lens_below(model):
    result = next_token_decoding(model, relation_prompts(40, seed=5), progress=False)
    affine, logit_lens = result.precision_at_1["affine"], result.precision_at_1["logit_lens"]
    assert affine[-1] == 1.0 and len(result.affine_texts) == 256
    assert affine[10:29].mean() > logit_lens[10:29].mean() + 0.1


def test_identity_patchscope_reads_paris_from_upper_layers_only(model):
    upper = Patchscope("The capital of France is", 24).inspect(model, top_k=1).top_tokens[0][0]
    lower = Patchscope("The capital of France is", 6).inspect(model, top_k=1).top_tokens[0][0]
    assert upper == " Paris" and lower != " Paris"
