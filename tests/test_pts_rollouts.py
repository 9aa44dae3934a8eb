"""Batched KV-cached rollouts: same tokens as Hugging Face generate, sampling filters, seeding."""

from __future__ import annotations

import pytest
import torch

from lens_pivotal.pts.rollouts import HFRollouts, SamplingConfig, sample_next_tokens


@pytest.fixture(scope="module")
def tiny_hf():
    from transformers import AutoModelForCausalLM

    from lens_pivotal.testing import tiny_llama_dir

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir()).eval()


CONTEXT = [5, 17, 42, 7, 99, 3]


def test_greedy_rollouts_match_hf_generate_including_early_stops(tiny_hf):
    reference = tiny_hf.generate(torch.tensor([CONTEXT]), do_sample=False, max_new_tokens=12, min_new_tokens=12)[0, len(CONTEXT):].tolist()
    stop = reference[4]  # a token the greedy path emits, so the rollout must stop there, stop token kept
    rollouts = HFRollouts(tiny_hf, [stop], SamplingConfig(temperature=0))
    assert rollouts.sample(CONTEXT, 3, 12, seed=0) == [reference[: reference.index(stop) + 1]] * 3
    assert HFRollouts(tiny_hf, [10**6], SamplingConfig(temperature=0)).sample(CONTEXT, 2, 12, seed=0) == [reference] * 2


def test_sampled_rollouts_are_seeded_and_leave_the_global_rng_alone(tiny_hf):
    rollouts = HFRollouts(tiny_hf, [0], SamplingConfig(temperature=1.0, top_p=1.0, top_k=0))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = rollouts.sample(CONTEXT, 6, 10, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert rollouts.sample(CONTEXT, 6, 10, seed=1) == first
    assert rollouts.sample(CONTEXT, 6, 10, seed=2) != first
    assert len({tuple(sequence) for sequence in first}) > 1
    assert all(len(sequence) == 10 or sequence[-1] == 0 for sequence in first)


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.tensor([[4.0, 3.0, 2.9, 0.0, -1.0]]).repeat(2000, 1)
    generator = torch.Generator().manual_seed(0)
    top2 = sample_next_tokens(logits, SamplingConfig(temperature=1.0, top_p=1.0, top_k=2), generator)
    assert set(top2.tolist()) == {0, 1}
    nucleus = sample_next_tokens(logits, SamplingConfig(temperature=1.0, top_p=0.5, top_k=0), generator)
    assert set(nucleus.tolist()) == {0}  # token 0 alone holds > 50% of the mass
    everything = sample_next_tokens(logits, SamplingConfig(temperature=1.0, top_p=1.0, top_k=0), generator)
    assert set(everything.tolist()) == {0, 1, 2, 3, 4}
    greedy = sample_next_tokens(logits[:3], SamplingConfig(temperature=0), generator)
    assert greedy.tolist() == [0, 0, 0]


def test_rows_that_stop_early_leave_the_others_on_their_own_cache(tiny_hf):
    """Tokens that free-running rollouts emit early are made stop tokens, so rows leave the batch at different steps;
    every token drawn must still be among the top 3 of the model's logits for its own row, recomputed without cache."""
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, top_k=3)
    free = HFRollouts(tiny_hf, [10**6], sampling).sample(CONTEXT, 16, 8, seed=0)
    sequences = HFRollouts(tiny_hf, {free[0][1], free[1][2]}, sampling).sample(CONTEXT, 16, 8, seed=0)
    assert len({len(sequence) for sequence in sequences}) > 2
    for sequence in sequences:
        with torch.inference_mode():
            logits = tiny_hf(torch.tensor([CONTEXT + sequence])).logits[0, len(CONTEXT) - 1 : -1]
        top3 = logits.topk(3).indices
        assert all(token in allowed for token, allowed in zip(sequence, top3.tolist()))
