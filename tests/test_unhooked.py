"""The unhooked HF model: a plain HF model's outputs and samples, on the bridge's own tensors, hooks left out."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.hook_points import HookPoint

from lens_pivotal import unhooked
from lens_pivotal.pts.rollouts import HFRollouts, SamplingConfig
from lens_pivotal.pts.search import hf_backend
from lens_pivotal.unhooked import UnhookedModelError, unhooked_hf_model

CONTEXT = [5, 17, 42, 7, 99, 3, 250, 11]


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_it_computes_what_a_plain_hf_model_with_the_same_weights_computes(family_models, arch):
    bridge, reference = family_models(arch)
    plain = unhooked_hf_model(bridge)
    ids = torch.tensor([CONTEXT])
    with torch.no_grad():
        ours, theirs = plain(ids).logits.log_softmax(-1), reference(ids).logits.log_softmax(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(module, HookPoint) for module in plain.modules())
    assert plain.config._attn_implementation == "sdpa"
    assert bridge.original_model.config._attn_implementation == "eager"  # the bridge's own config is untouched


def test_it_shares_the_bridges_tensors(family_models):
    bridge, _ = family_models("qwen3")
    plain = unhooked_hf_model(bridge)
    bridge_storage = {tensor.data_ptr() for tensor in bridge.parameters()}
    assert all(parameter.data_ptr() in bridge_storage for parameter in plain.parameters())
    assert not any(tensor.is_meta for tensor in [*plain.parameters(), *plain.buffers()])


def test_its_samples_equal_a_plain_hf_models_and_bridge_hooks_do_not_fire(family_models):
    bridge, reference = family_models("qwen3")
    sampling = SamplingConfig(temperature=0)  # a random tiny model is near-uniform: sampling would amplify rounding
    expected = HFRollouts(reference, [10**6], sampling).sample(CONTEXT, 6, 10, seed=3)
    fired = []
    with bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda tensor, hook: fired.append(tensor.shape[1]))]):
        backend = hf_backend(bridge, sampling)
        backend.stop_ids = torch.tensor([10**6])
        assert backend.sample(CONTEXT, 6, 10, seed=3) == expected
        assert fired == [8]  # only the construction check ran through the bridge (8 tokens)
        hooked = hf_backend(bridge, sampling, hooks=True)
        hooked.stop_ids = torch.tensor([10**6])
        hooked.sample(CONTEXT, 2, 3, seed=3)
    assert len(fired) > 1


def test_a_model_that_disagrees_with_the_bridge_is_refused(family_models, monkeypatch):
    bridge, _ = family_models("qwen3")
    make_config = unhooked._plain_config

    def other_activation(hf_model):
        config = make_config(hf_model)
        config.hidden_act = "relu"
        return config

    monkeypatch.setattr(unhooked, "_plain_config", other_activation)
    with pytest.raises(UnhookedModelError, match="disagrees with the bridge"):
        unhooked_hf_model(bridge)


def test_a_model_split_over_devices_samples_through_the_bridge(family_models, monkeypatch):
    bridge, _ = family_models("qwen3")
    monkeypatch.setattr(bridge.original_model, "hf_device_map", {"model.layers.0": 0, "model.layers.1": 1}, raising=False)
    assert hf_backend(bridge, SamplingConfig()).hf_model is bridge.original_model
    with pytest.raises(ValueError, match="split over several devices"):
        unhooked_hf_model(bridge)
