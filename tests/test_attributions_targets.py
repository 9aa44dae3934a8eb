"""Attribution targets: ``layer`` is the block, for probes trained on some blocks as for the logit lens."""

from __future__ import annotations

import pytest
import torch

import lens_pivotal as lp

from conftest import checkpoint_tokenizer, hf_token_ids

TEXT = "Sam has 3 apples and buys 4 more, so he has 7."
POSITION = 5


@pytest.fixture(scope="module")
def probes_on_blocks_1_and_0(family_models):
    model, _ = family_models("qwen3")
    generator = torch.Generator().manual_seed(0)
    acts, labels = torch.randn(2, 64, 64, generator=generator), torch.arange(64) % 2
    acts[0] += 2.0 * (2 * labels - 1)[:, None].float()
    return lp.train_probes(acts, labels, model=model, layers=[1, 0], settings=lp.ProbeSettings(l2=1.0, n_bootstrap=0))


def test_a_probes_target_at_a_block_is_that_probe_on_the_hf_state_of_that_block(family_models, probes_on_blocks_1_and_0):
    model, reference = family_models("qwen3")
    probes = probes_on_blocks_1_and_0
    attribution = lp.attribute_tokens(model, TEXT, target=probes, layer=1, position=POSITION, method="input_x_gradient")
    with torch.no_grad():
        state = reference(hf_token_ids(reference, TEXT), output_hidden_states=True).hidden_states[2][0, POSITION]
    direction, offset = probes.residual_direction(1)
    assert attribution.target_value == pytest.approx(float(state @ direction + offset), abs=1e-4)
    assert "block 1" in attribution.target_label
    with pytest.raises(ValueError, match="block 2 is not among the layers these probes read"):
        lp.attribute_tokens(model, TEXT, target=probes, layer=2)


def test_a_token_targets_logit_lens_layer_is_the_block(family_models):
    model, reference = family_models("qwen3")
    attribution = lp.attribute_tokens(model, TEXT, target=" apples", layer=1, position=2, method="input_x_gradient")
    with torch.no_grad():
        state = reference(hf_token_ids(reference, TEXT), output_hidden_states=True).hidden_states[2][0, 2]
        logits = reference.lm_head(reference.model.norm(state))
    token = checkpoint_tokenizer(reference)(" apples", add_special_tokens=False)["input_ids"][0]
    assert attribution.target_value == pytest.approx(float(logits.log_softmax(-1)[token]), abs=1e-4)
