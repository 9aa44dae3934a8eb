"""The one tokenization rule: strings as the model's own tokenizer makes them, TransformerLens' rule on request, ids
as given, against the HF tokenizer and a plain HF forward."""

from __future__ import annotations

import pytest
import torch
from conftest import checkpoint_tokenizer, hf_token_ids

import lens_pivotal as lp
from lens_pivotal.patchscope import relation_prompts
from lens_pivotal.probes import score_text
from lens_pivotal.tokens import token_ids

TEXT = "The capital city of France is"


@pytest.mark.slow
def test_strings_tokenize_as_the_models_own_tokenizer_not_as_transformer_lens(family_models):
    model, reference = family_models("embedded")
    ours = token_ids(model, TEXT)
    assert ours.tolist() == hf_token_ids(reference, TEXT)[0].tolist()
    transformer_lens = token_ids(model, TEXT, tokenization="transformer_lens")
    assert transformer_lens.tolist() == model.to_tokens(TEXT)[0].tolist() == [model.tokenizer.bos_token_id, *ours.tolist()]
    prompts = relation_prompts(32, seed=0)
    acts = lp.cache_resid_post(model, prompts, [-1] * len(prompts), layers=[model.cfg.n_layers - 1], progress=False)
    with torch.no_grad():
        expected = torch.stack([reference(hf_token_ids(reference, p)).logits[0, -1] for p in prompts]).argmax(-1)
    assert torch.equal(lp.logit_lens(model, acts[0]).argmax(-1).cpu(), expected), "the model's own top-1, as in HF"


def test_ids_pass_through_and_bad_input_names_the_argument(tiny_qwen3_model):
    ids = [785, 6722, 315]
    assert token_ids(tiny_qwen3_model, ids).tolist() == ids == token_ids(tiny_qwen3_model, torch.tensor(ids)).tolist()
    assert token_ids(tiny_qwen3_model, "<|im_start|>user", add_special_tokens=False).tolist()[0] == 151644
    with pytest.raises(ValueError, match=r"tokenization must be one of \('tokenizer', 'transformer_lens'\)"):
        token_ids(tiny_qwen3_model, TEXT, tokenization="hf")
    with pytest.raises(ValueError, match="prompt has no tokens"):
        token_ids(tiny_qwen3_model, [], what="prompt")
    with pytest.raises(ValueError, match="1-D integer ids"):
        token_ids(tiny_qwen3_model, torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="text must be a string or token ids, got dict"):
        token_ids(tiny_qwen3_model, {})


@pytest.mark.parametrize("arch", ["llama", pytest.param("embedded", marks=pytest.mark.slow)])
def test_every_entry_point_puts_a_string_on_the_same_tokens_as_the_hf_tokenizer(family_models, arch):
    model, reference = family_models(arch)
    generator = torch.Generator().manual_seed(0)
    acts, labels = torch.randn(1, 32, model.cfg.d_model, generator=generator), torch.arange(32) % 2
    probes = lp.train_probes(acts, labels, model=model, layers=[0], settings=lp.ProbeSettings(l2=1.0, n_bootstrap=0))
    tokenizer = checkpoint_tokenizer(reference)
    plain, templated = "Sam has 3 apples.", f"{tokenizer.all_special_tokens[0]}Sam has 3 apples."
    for text, expected in ((plain, tokenizer(plain)["input_ids"]),
                           (templated, tokenizer(templated, add_special_tokens=False)["input_ids"])):
        assert token_ids(model, text).tolist() == expected
        assert score_text(probes, model, text).token_ids == expected
        assert lp.attribute_tokens(model, text, target=None, method="input_x_gradient").token_ids == expected
        assert lp.head_attributions(model, text, target=None).token_ids == expected

