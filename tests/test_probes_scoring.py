"""Scoring new text: score_text, the recording hook (alone, batched, beside user hooks, in generate)."""

from __future__ import annotations

import pytest
import torch

from lens_pivotal.probes import ProbeSettings, probe_examples, train_probes
from lens_pivotal.probes.scoring import ProbeRecorder, generate_with_scores, recording, score_text
from lens_pivotal.testing import reference_greedy_tokens

TEXTS = ["Sam has 3 apples and buys 4 more.", "The answer is 7 because 3 + 4 = 7."]


@pytest.fixture(scope="module")
def probes(tiny_qwen3_model, synthetic_rows):
    examples = probe_examples(tiny_qwen3_model, synthetic_rows)
    acts = examples.cache(tiny_qwen3_model, embeddings=True, progress=False)
    settings = ProbeSettings(l2=1.0, n_bootstrap=0)
    return train_probes(
        acts, examples.labels, groups=examples.groups, model=tiny_qwen3_model, embeddings=True, settings=settings
    )


def test_score_text_layers(probes, tiny_qwen3_model):
    best = score_text(probes, tiny_qwen3_model, TEXTS[0])
    every = score_text(probes, tiny_qwen3_model, TEXTS[0], layer="all")
    assert probes.layer_labels == ["emb", "0", "1", "2"]
    assert best.layers == [probes.best_layer] and every.layers == ["blocks.0.hook_resid_pre", 0, 1, 2]
    assert every.scores.shape == (4, len(best.tokens)) and "".join(best.tokens) == TEXTS[0]
    assert torch.allclose(every.scores[probes.slot(probes.best_layer)], best.scores[0], atol=1e-6)
    chosen = score_text(probes, tiny_qwen3_model, TEXTS[0], layer=[2, "blocks.0.hook_resid_pre"])
    assert torch.allclose(chosen.scores, every.scores[[3, 0]], atol=1e-6) and chosen.layers == [2, "blocks.0.hook_resid_pre"]
    assert chosen.top(1, layer=2)[0][2] == pytest.approx(every.scores[3].max().item())
    assert best.top(2)[0][2] == pytest.approx(best.scores[0].max().item())


@pytest.mark.parametrize("layer", ["blocks.0.hook_resid_pre", 0, 2])
def test_hook_gives_the_scores_of_score_text_on_a_batch(probes, tiny_qwen3_model, layer):
    ids = [tiny_qwen3_model.tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    width = min(len(i) for i in ids)
    batch = torch.tensor([i[:width] for i in ids])
    with recording(probes, tiny_qwen3_model, layer) as recorder:
        tiny_qwen3_model(batch)
    recorded = recorder.concatenated()
    for row in range(2):
        expected = score_text(probes, tiny_qwen3_model, batch[row].tolist(), layer=layer).scores[0]
        assert torch.allclose(recorded[row], expected, atol=1e-5)


def test_hook_composes_with_user_hooks_and_is_always_removed(probes, tiny_qwen3_model):
    seen = []
    ids = torch.tensor([tiny_qwen3_model.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]])
    name = "blocks.1.hook_resid_post"
    ablate_block_0 = ("blocks.0.hook_resid_post", lambda resid, hook: torch.zeros_like(resid))
    with tiny_qwen3_model.hooks(fwd_hooks=[(name, lambda resid, hook: seen.append(tuple(resid.shape))), ablate_block_0]):
        with pytest.raises(KeyError), recording(probes, tiny_qwen3_model, 1) as recorder:
            tiny_qwen3_model(ids)
            raise KeyError("user code fails inside the block")
    assert seen == [tuple(ids.shape) + (64,)] and len(recorder.scores) == 1
    plain = score_text(probes, tiny_qwen3_model, ids[0].tolist(), layer=1).scores[0]
    assert not torch.allclose(recorder.scores[0][0], plain), "the user's ablation upstream reached our scores"
    tiny_qwen3_model(ids)
    assert len(recorder.scores) == 1, "the recorder was detached after the with block"


def test_generate_with_scores_matches_scoring_the_finished_text(probes, tiny_qwen3_model):
    live = []
    generated = generate_with_scores(
        tiny_qwen3_model, probes, TEXTS[0], max_new_tokens=6, do_sample=False, layer=1, on_score=live.append
    )
    assert live[:6] == pytest.approx(generated.scores.tolist(), abs=1e-6), "each score reaches on_score before its token"
    assert len(generated.token_ids) == len(generated.scores) == 6
    whole = score_text(probes, tiny_qwen3_model, generated.prompt_ids + generated.token_ids, layer=1).scores[0]
    start = len(generated.prompt_ids) - 1
    assert torch.allclose(generated.scores, whole[start : start + 6], atol=1e-4)
    assert [flag for _, _, flag in generated] == (generated.scores >= 0.5).tolist()


def test_generate_with_scores_generates_what_an_uncached_hf_loop_does(probes, tiny_qwen3_model, family_models):
    _, reference = family_models("qwen3")
    generated = generate_with_scores(tiny_qwen3_model, probes, TEXTS[0], max_new_tokens=6, do_sample=False, layer=1)
    expected = reference_greedy_tokens(reference, torch.tensor([generated.prompt_ids]), 6)
    assert generated.token_ids == expected[0].tolist()


def test_scoring_errors(probes, tiny_qwen3_model):
    with pytest.raises(IndexError, match="block 9 is out of range: the model has 3 blocks"):
        score_text(probes, tiny_qwen3_model, TEXTS[0], layer=9)
    with pytest.raises(ValueError, match="best is not among the layers these probes read"):
        score_text(probes, tiny_qwen3_model, TEXTS[0], layer="best")
    with pytest.raises(ValueError, match="no tokens"):
        score_text(probes, tiny_qwen3_model, "")
    with pytest.raises(IndexError, match="out of range"):
        ProbeRecorder(probes, 7)
    acts = torch.randn(3, 40, 32)
    groups = [str(i // 4) for i in range(40)]
    other = train_probes(acts, torch.arange(40) % 2, groups=groups, settings=ProbeSettings(l2=1.0, n_bootstrap=0))
    with pytest.raises(ValueError, match="d_model 32, 3 layers.*has d_model 64 and 3 layers"):
        score_text(other, tiny_qwen3_model, TEXTS[0])


def test_recorder_and_token_errors(probes, tiny_qwen3_model):
    with pytest.raises(RuntimeError, match="nothing recorded yet: no forward pass went through blocks"):
        ProbeRecorder(probes, 1).concatenated()
    with pytest.raises(TypeError, match="text must be a string or token ids, got float"):
        score_text(probes, tiny_qwen3_model, 3.5)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_generated_scores_are_the_probe_on_the_hf_states_with_or_without_the_kv_cache(probes, tiny_qwen3_model, family_models, kv_cache):
    _, reference = family_models("qwen3")
    generated = generate_with_scores(tiny_qwen3_model, probes, TEXTS[0], max_new_tokens=5, do_sample=False, layer=1,
                                     use_past_kv_cache=kv_cache)
    ids = torch.tensor([generated.prompt_ids + generated.token_ids])
    with torch.no_grad():
        state = reference(ids, output_hidden_states=True).hidden_states[2][0]  # block 1, written out in plain HF
    direction, offset = probes.residual_direction(1)
    by_hand = torch.sigmoid(state @ direction + offset)[len(generated.prompt_ids) - 1 : -1]
    torch.testing.assert_close(generated.scores, by_hand, atol=1e-4, rtol=1e-4)
