"""Head attributions: the parts sum to the target, the target equals the plain Hugging Face model's own value (in our
convention: a LayerNorm model's stream is centred), and one head's direct effect equals its slice of ``o_proj`` in plain
Hugging Face."""

from __future__ import annotations

import pytest
import torch

import lens_pivotal as lp

from conftest import LAYERNORM_FAMILIES, family_params, hf_resid_states, hf_token_ids
from test_attributions_token_attribution import random_probes

ARCHS = family_params()
TEXT = "Sam has 12 apples and buys 7 more, so now Sam has"
POSITION = 8


def hf_hidden(reference, ids):
    with torch.no_grad():
        return reference(ids, output_hidden_states=True)


def assert_parts_sum(attribution):
    scale = max(1.0, abs(attribution.target_value))
    assert attribution.total == pytest.approx(attribution.target_value, abs=2e-5 * scale)


@pytest.mark.parametrize("arch", ARCHS)
def test_token_logit_parts_sum_to_the_hf_logit(family_models, arch):
    model, reference = family_models(arch)
    ids = hf_token_ids(reference, TEXT)
    token = int(ids[0, POSITION + 1])
    attribution = lp.head_attributions(model, TEXT, target=token, position=POSITION)
    logits = hf_hidden(reference, ids).logits[0, POSITION]
    expected = float(logits[token] - logits.mean())  # compatibility mode centres the unembedding over the vocabulary
    assert attribution.target_value == pytest.approx(expected, abs=1e-4 * max(1.0, abs(expected)))
    assert_parts_sum(attribution)
    n_blocks, n_heads = model.cfg.n_layers, model.cfg.n_heads
    assert attribution.heads.shape == (n_blocks, n_heads, POSITION + 1) and attribution.mlp.shape == (n_blocks,)
    assert attribution.target_label.startswith("logit(")


@pytest.mark.parametrize("arch", ARCHS)
def test_probe_and_direction_parts_sum_to_the_target(family_models, arch):
    model, reference = family_models(arch)
    probes = random_probes(model, seed=3)
    ids = hf_token_ids(reference, TEXT)
    probe = lp.head_attributions(model, TEXT, target=probes, layer=1, position=POSITION)
    states = hf_resid_states(reference, ids)
    hidden = states[2][0, POSITION].double()
    expected = float(((hidden - probes.mean[1]) / probes.scale[1]) @ probes.weight[1].double() + probes.bias[1])
    assert probe.target_value == pytest.approx(expected, rel=1e-4, abs=1e-3)  # the probe's arithmetic, by hand
    assert_parts_sum(probe)
    assert probe.heads.shape[0] == 2  # blocks 0 and 1 write the residual stream probe 1 reads
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    projected = lp.head_attributions(model, TEXT, target=("blocks.0.hook_resid_post", direction), position=POSITION)
    expected = float(states[1][0, POSITION] @ direction)
    assert projected.target_value == pytest.approx(expected, rel=1e-4, abs=1e-3)
    assert_parts_sum(projected)


def hf_final_norm(reference) -> torch.nn.Module:
    backbone = reference.base_model
    return next(getattr(backbone, name) for name in ("norm", "ln_f", "final_layer_norm") if hasattr(backbone, name))


@pytest.mark.parametrize("arch", ["qwen3", *LAYERNORM_FAMILIES])
def test_logit_lens_target_parts_sum_to_the_hf_logit_lens(family_models, arch):
    model, reference = family_models(arch)
    ids = hf_token_ids(reference, TEXT)
    attribution = lp.head_attributions(model, TEXT, target=77, layer=0, position=POSITION)
    with torch.no_grad():
        state = hf_hidden(reference, ids).hidden_states[1][:, POSITION]  # HF's own: the final norm is blind to its mean
        logits = reference.get_output_embeddings()(hf_final_norm(reference)(state))[0]
        expected = float(logits[77] - logits.mean())
    assert attribution.target_value == pytest.approx(expected, abs=1e-4)
    assert_parts_sum(attribution)


def test_one_heads_direct_effect_equals_its_o_proj_slice_in_hf(family_models):
    model, reference = family_models("llama")
    ids = hf_token_ids(reference, TEXT)
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(4))
    attribution = lp.head_attributions(model, TEXT, target=("blocks.1.hook_resid_post", direction), position=POSITION)
    captured = {}
    o_proj = reference.model.layers[1].self_attn.o_proj
    handle = o_proj.register_forward_pre_hook(lambda module, inputs: captured.update(z=inputs[0]))
    try:
        hf_hidden(reference, ids)
    finally:
        handle.remove()
    d_head = model.cfg.d_head
    for head in range(model.cfg.n_heads):
        part = slice(head * d_head, (head + 1) * d_head)
        expected = captured["z"][0, POSITION, part] @ o_proj.weight[:, part].T.detach() @ direction
        assert float(attribution.heads[1, head].sum()) == pytest.approx(float(expected), abs=1e-4)


def test_top_heads_patterns_and_source_totals(family_models):
    model, _ = family_models("qwen2")
    attribution = lp.head_attributions(model, TEXT, target=None, position=POSITION, keep_patterns=3)
    top = attribution.top_heads(4)
    assert [abs(value) for *_, value in top] == sorted((abs(value) for *_, value in top), reverse=True)
    assert top[0][2] == pytest.approx(float(attribution.head_totals[top[0][0], top[0][1]]))
    assert attribution.top_pattern_heads == [(block, head) for block, head, _ in top[:3]]
    assert attribution.top_patterns.shape == (3, POSITION + 1, POSITION + 1)
    torch.testing.assert_close(attribution.patterns.sum(-1), torch.ones_like(attribution.patterns.sum(-1)))
    torch.testing.assert_close(attribution.source_totals.sum(), attribution.heads.sum())


def test_a_target_not_linear_in_the_residual_stream_is_refused(tiny_qwen3_model):
    width = tiny_qwen3_model.cfg.d_head
    with pytest.raises(ValueError, match="needs a target linear in the residual stream"):
        lp.head_attributions(tiny_qwen3_model, TEXT, target=("blocks.0.attn.hook_z", torch.ones(width)))
    with pytest.raises(IndexError, match="position 99 is out of range"):
        lp.head_attributions(tiny_qwen3_model, TEXT, target=5, position=99)


def test_a_target_at_resid_mid_holds_that_blocks_attention_and_its_parts_add_up(family_models, monkeypatch):
    model, reference = family_models("qwen3")
    ids = hf_token_ids(reference, TEXT)
    direction = torch.nn.functional.normalize(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3)), dim=0)
    attention = {}
    handle = reference.model.layers[1].self_attn.register_forward_hook(
        lambda module, inputs, output: attention.__setitem__("out", output[0]))
    try:
        before = hf_hidden(reference, ids).hidden_states[1][0, POSITION]
    finally:
        handle.remove()
    by_hand = float((before + attention["out"][0, POSITION]) @ direction)  # block 1's input plus its attention, in HF
    attribution = lp.head_attributions(model, ids[0], target=("blocks.1.hook_resid_mid", direction), position=POSITION)
    assert attribution.target_value == pytest.approx(by_hand, abs=1e-4)
    assert attribution.heads.shape[0] == 2 and attribution.mlp.shape == (1,)
    assert_parts_sum(attribution)
    import lens_pivotal.attributions.heads as heads_module

    monkeypatch.setattr(heads_module, "_reading_point", lambda hook_name: (1, False))  # leave block 1's attention out
    with pytest.raises(RuntimeError, match="add up to"):
        lp.head_attributions(model, ids[0], target=("blocks.1.hook_resid_mid", direction), position=POSITION)
