"""Steering hooks against a plain Hugging Face model steered by hand (a forward hook on the decoder layer adding the
same vector): exact positions, gating on the probe's own score, and KV-cached decode steps during ``generate``.

On a LayerNorm model our stream is HF's minus its mean over d_model; adding a vector to either gives streams that
differ by that mean alone, which no LayerNorm sees, so the logits must agree (up to compatibility mode's centring of
the unembedding)."""

from __future__ import annotations

import pytest
import torch
from conftest import LAYERNORM_FAMILIES, in_our_convention

import lens_pivotal as lp
from lens_pivotal.probes import LayerProbes, ProbeRecorder, ProbeSettings
from lens_pivotal.testing import edited_block_output

LAYER, ALPHA, NORM = 1, 3.0, 2.5
IDS = [[5, 17, 42, 8, 99, 23, 7]]
STEERED_FAMILIES = ["qwen3", *LAYERNORM_FAMILIES]


@pytest.fixture(scope="module")
def direction():
    return torch.randn(64, generator=torch.Generator().manual_seed(0))


def fitted_probes(model) -> LayerProbes:
    """Probes fitted on random activations for ``model``'s 3 blocks."""
    generator = torch.Generator().manual_seed(1)
    acts = torch.randn(3, 60, 64, generator=generator)
    labels = (acts[:, :, 0].mean(0) > 0).float()
    return LayerProbes.from_model(model, settings=ProbeSettings(l2=1.0)).fit(acts, labels, [str(i // 4) for i in range(60)])


@pytest.fixture(scope="module")
def probes(tiny_qwen3_model):
    return fitted_probes(tiny_qwen3_model)


def hand_steered_logits(reference, ids, add_at):
    """HF logits with ``add_at(hidden [batch, pos, d]) -> addition`` added to decoder layer LAYER's output."""
    with torch.no_grad(), edited_block_output(reference, LAYER, lambda hidden: hidden + add_at(hidden)):
        return reference(torch.tensor(ids)).logits


def centred(logits):
    """Logits less their mean over the vocabulary, which compatibility mode's centred unembedding removes."""
    return logits - logits.mean(-1, keepdim=True)


def unit(vector):
    return vector / vector.norm()


@pytest.mark.parametrize("arch", STEERED_FAMILIES)
@pytest.mark.parametrize("positions", ["all", [1, 4], "generated"])
def test_adds_alpha_unit_times_scale_at_the_chosen_positions_only(family_models, arch, direction, positions):
    model, reference = family_models(arch)
    hook = lp.steering_hook(direction, ALPHA, layer=LAYER, positions=positions, residual_norm=NORM)
    with torch.no_grad(), model.hooks(fwd_hooks=[hook.fwd_hook]):
        ours = model(torch.tensor(IDS))
    chosen = {"all": range(7), "generated": [6]}.get(positions, positions) if isinstance(positions, str) else positions
    mask = torch.zeros(1, 7, 1)
    mask[0, list(chosen)] = 1
    expected = hand_steered_logits(reference, IDS, lambda hidden: mask * ALPHA * NORM * unit(direction))
    unsteered = hand_steered_logits(reference, IDS, lambda hidden: 0 * hidden)
    torch.testing.assert_close(centred(ours), centred(expected), atol=1e-4, rtol=1e-4)
    assert (expected - unsteered).abs().max() > 1e-2  # the addition matters, so the comparison can fail
    assert hook.masks[0].tolist() == [[position in chosen for position in range(7)]] and hook.n_steered == len(chosen)
    assert hook.hook_name == f"blocks.{LAYER}.hook_resid_post"


@pytest.mark.parametrize("arch", STEERED_FAMILIES)
def test_gate_follows_the_probes_own_score_on_the_unsteered_state(family_models, arch, direction):
    model, reference = family_models(arch)
    probes = fitted_probes(model)
    with torch.no_grad():
        hidden = in_our_convention(reference, reference(torch.tensor(IDS), output_hidden_states=True).hidden_states[LAYER + 1][0])
    weight, bias = probes.weight[LAYER], probes.bias[LAYER]  # the probe's arithmetic, by hand on HF's state
    scores = torch.sigmoid(((hidden - probes.mean[LAYER]) / probes.scale[LAYER]) @ weight + bias)
    threshold = float(scores.median())
    hook = lp.steering_hook(direction, ALPHA, layer=LAYER, residual_norm=NORM, gate=(probes, threshold))
    with torch.no_grad(), model.hooks(fwd_hooks=[hook.fwd_hook]):
        ours = model(torch.tensor(IDS))
    gate = (scores >= threshold).float()[None, :, None]
    expected = hand_steered_logits(reference, IDS, lambda h: gate * ALPHA * NORM * unit(direction))
    torch.testing.assert_close(centred(ours), centred(expected), atol=1e-4, rtol=1e-4)
    assert hook.masks[0][0].tolist() == (scores >= threshold).tolist() and 0 < hook.n_steered < 7


@pytest.mark.parametrize("arch", STEERED_FAMILIES)
@pytest.mark.parametrize("kv_cache", [True, False])
def test_decode_steps_are_steered_during_generate(family_models, arch, direction, kv_cache):
    model, reference = family_models(arch)
    steps = 6
    hook = lp.steering_hook(direction, 8.0, layer=LAYER, positions="generated", residual_norm=NORM)
    with model.hooks(fwd_hooks=[hook.fwd_hook]):
        ours = model.generate(torch.tensor(IDS), max_new_tokens=steps, do_sample=False, use_past_kv_cache=kv_cache,
                              return_type="tokens", verbose=False, output_logits=True)
    ids, expected_logits = list(IDS[0]), []
    for _ in range(steps):  # HF greedy decoding, re-running the whole sequence, steering the prompt's last position on
        generated = torch.zeros(1, len(ids), 1)
        generated[0, len(IDS[0]) - 1 :] = 1
        logits = hand_steered_logits(reference, [ids], lambda h, generated=generated: generated * 8.0 * NORM * unit(direction))
        expected_logits.append(logits[0, -1])
        ids.append(int(logits[0, -1].argmax()))
    assert ours.sequences[0].tolist() == ids
    step_logits = torch.stack([logits[0] for logits in ours.logits])
    torch.testing.assert_close(centred(step_logits), centred(torch.stack(expected_logits)), atol=1e-3, rtol=1e-3)
    assert hook.n_steered == steps + (0 if kv_cache else sum(range(steps)))  # an uncached pass re-steers the earlier ones
    plain = model.generate(torch.tensor(IDS), max_new_tokens=steps, do_sample=False, use_past_kv_cache=True,
                           return_type="tokens", verbose=False)
    assert plain[0].tolist() != ids  # steering changed the continuation


def test_bad_arguments_are_named(tiny_qwen3_model, direction, probes):
    with pytest.raises(ValueError, match="residual_norm"):
        lp.steering_hook(direction, 1.0, layer=LAYER)
    with pytest.raises(ValueError, match="positions must be"):
        lp.steering_hook(direction, 1.0, layer=LAYER, absolute=True, positions="prompt")
    with pytest.raises(ValueError, match="the gate's probes read"):
        lp.steering_hook(direction, 1.0, layer=LAYER, absolute=True, gate=(probes[0], 0.5))


def test_composes_with_run_with_hooks_the_probe_recorder_and_a_user_hook(tiny_qwen3_model, direction, probes):
    hook = lp.steering_hook(direction, ALPHA, layer=LAYER, positions=[2], residual_norm=NORM)
    seen = {}
    before = ("blocks.1.hook_resid_post", lambda resid, hook: seen.__setitem__("before", resid.clone()))
    after = ("blocks.1.hook_resid_post", lambda resid, hook: seen.__setitem__("after", resid.clone()))
    recorder = ProbeRecorder(probes, LAYER)  # reads the state it is given: here, after the steering
    tiny_qwen3_model.run_with_hooks(torch.tensor(IDS), fwd_hooks=[before, hook.fwd_hook, after, recorder.fwd_hook])
    added = seen["after"] - seen["before"]
    torch.testing.assert_close(added[0, 2], ALPHA * NORM * unit(direction))
    assert added[0, [0, 1, 3, 4, 5, 6]].abs().max() == 0
    expected = probes.proba_at([LAYER], seen["after"].reshape(1, 7, 64))
    torch.testing.assert_close(recorder.concatenated(), expected.view(1, 7), atol=1e-6, rtol=1e-5)
    assert not tiny_qwen3_model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks  # run_with_hooks removed them all
