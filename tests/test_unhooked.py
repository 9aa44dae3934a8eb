"""The unhooked HF model: a plain HF model's outputs and samples, on the bridge's own tensors, hooks left out; on
GPT-2 and GPT-NeoX with a fused q/k/v projection rebuilt from the bridge's folded split one and the unembedding bias
that compatibility mode folds the final LayerNorm's bias into."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import LAYERNORM_FAMILIES, TINY_FAMILIES, family_dir
from transformer_lens.hook_points import HookPoint

import lens_pivotal as lp
from lens_pivotal import unhooked
from lens_pivotal.pts.rollouts import HFRollouts, SamplingConfig
from lens_pivotal.pts.search import hf_backend
from lens_pivotal.testing import reference_greedy_tokens, tiny_qwen_dir
from lens_pivotal.unhooked import UnhookedModelError, unhooked_hf_model

CONTEXT = [5, 17, 42, 7, 99, 3, 250, 11]


@pytest.mark.parametrize("arch", TINY_FAMILIES)
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


@pytest.mark.parametrize(
    "arch, compat, rebuilt",
    [("qwen3", True, ""), ("gpt2", True, ".c_attn."), ("neox", True, ".query_key_value."), ("neox", False, "")],
)
def test_it_shares_the_bridges_tensors_but_a_stale_fused_qkv_projection(family_models, arch, compat, rebuilt):
    bridge = family_models(arch)[0] if compat else lp.load_model(family_dir(arch), device="cpu", compat=False)
    plain = unhooked_hf_model(bridge)
    bridge_storage = {tensor.data_ptr() for tensor in [*bridge.parameters(), *bridge.buffers()]}
    for name, tensor in [*plain.named_parameters(), *plain.named_buffers()]:
        assert (tensor.data_ptr() in bridge_storage) != bool(rebuilt and rebuilt in name), name
    assert not any(tensor.is_meta for tensor in [*plain.parameters(), *plain.buffers()])


@pytest.mark.parametrize("arch", ["qwen3", *LAYERNORM_FAMILIES])
def test_its_samples_equal_a_plain_hf_models_until_a_hook_sends_them_through_the_bridge(family_models, arch):
    bridge, reference = family_models(arch)
    sampling = SamplingConfig(temperature=0)  # a random tiny model is near-uniform: sampling would amplify rounding
    expected = HFRollouts(reference, [10**6], sampling).sample(CONTEXT, 6, 10, seed=3)
    backend = hf_backend(bridge, sampling)
    backend.stop_ids = torch.tensor([10**6])
    ran = []
    through_block = bridge.blocks[0].register_forward_hook(lambda *_: ran.append(1))  # a torch hook, not a hook point
    try:
        assert backend.sample(CONTEXT, 6, 10, seed=3) == expected
    finally:
        through_block.remove()
    assert ran == [1]  # only the check made when the unhooked model was built ran through the bridge
    fired = []
    with bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda tensor, hook: fired.append(tensor.shape[1]))]):
        backend.sample(CONTEXT, 2, 3, seed=3)
    assert fired == [8, 1, 1]  # the prompt, then one token per step
    assert hf_backend(bridge, sampling, hooks=True).sampling_model() is bridge.original_model


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
    assert hf_backend(bridge, SamplingConfig()).sampling_model() is bridge.original_model
    with pytest.raises(ValueError, match="split over several devices"):
        unhooked_hf_model(bridge)


def test_it_carries_the_checkpoints_generation_config_whose_extra_eos_ends_rollouts(family_models, tmp_path):
    _, reference = family_models("qwen3")
    greedy = reference_greedy_tokens(reference, torch.tensor([CONTEXT]), 8)[0].tolist()
    extra_eos = greedy[-1]  # a token the greedy path reaches after others: the rollout must stop at it, kept
    assert greedy.index(extra_eos) > 0
    for source in tiny_qwen_dir("qwen3").iterdir():  # the same checkpoint, but for its generation_config.json
        if source.name != "generation_config.json":
            (tmp_path / source.name).symlink_to(source)
    eos_ids = [reference.generation_config.eos_token_id, extra_eos]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}))
    backend = hf_backend(lp.load_model(tmp_path, device="cpu"), SamplingConfig(temperature=0))
    assert backend.sample(CONTEXT, 2, 8, seed=0) == [greedy[: greedy.index(extra_eos) + 1]] * 2
    assert backend.sampling_model().generation_config.eos_token_id == eos_ids  # on the unhooked model too
