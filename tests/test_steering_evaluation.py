"""Steering evaluation against the same rollout engine run on a plain Hugging Face model steered by hand, with the
bootstrap written out, the random control's norm, and the held-out check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import lens_pivotal as lp
from lens_pivotal.probes.selection import group_bootstrap_weights
from lens_pivotal.pts import ArithmeticConfig, arithmetic_problems
from lens_pivotal.pts.prompts import PromptFormat, prompt_token_ids
from lens_pivotal.pts.rollouts import HFRollouts, SamplingConfig, stop_token_ids
from lens_pivotal.pts.search import derive_seed
from lens_pivotal.steering import evaluate_steering, random_control
from lens_pivotal.testing import tiny_qwen_dir

LAYER, ALPHA, SAMPLES, TOKENS = 1, 6.0, 6, 8
PROMPT = PromptFormat(chat_template=False)


def even_length(text: str, answer: str) -> bool:
    """A stub oracle: the random tiny model never solves arithmetic, so grade something it does half the time."""
    return len(text) % 2 == 0


def hand_steered_rates(problems, tokenizer, direction):
    """Per-problem solved fractions from HFRollouts on a plain HF model, the last position of every pass steered by a
    forward hook on the decoder layer (``direction`` None: not steered)."""
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir("qwen3"), dtype=torch.float32).eval()

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1] += direction
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = reference.model.layers[LAYER].register_forward_hook(hook) if direction is not None else None
    backend = HFRollouts(reference, stop_token_ids(tokenizer, reference), SamplingConfig())
    rates = []
    for problem in problems:
        ids = prompt_token_ids(tokenizer, problem.question, PROMPT)
        completions = backend.sample(ids, SAMPLES, TOKENS, derive_seed(0, problem, ()))
        rates.append(np.mean([even_length(tokenizer.decode(c, skip_special_tokens=True), "") for c in completions]))
    if handle is not None:
        handle.remove()
    return rates


def test_success_rates_equal_hand_steered_hf_rollouts(tiny_qwen3_model):
    problems = arithmetic_problems(ArithmeticConfig(n_problems=4))
    direction = torch.randn(64, generator=torch.Generator().manual_seed(3))
    hook = lp.steering_hook(direction, ALPHA, layer=LAYER, positions="generated", absolute=True)
    report = evaluate_steering(tiny_qwen3_model, problems, {"steered": hook}, samples=SAMPLES, max_new_tokens=TOKENS,
                               oracle=even_length, prompt=PROMPT, n_bootstrap=200, progress=False)
    assert [result.name for result in report.results] == ["none", "steered", "random: steered"]
    tokenizer = tiny_qwen3_model.tokenizer
    assert report["none"].per_problem == pytest.approx(hand_steered_rates(problems, tokenizer, None))
    steered = hand_steered_rates(problems, tokenizer, ALPHA * direction / direction.norm())
    assert report["steered"].per_problem == pytest.approx(steered) and steered != report["none"].per_problem
    weights = group_bootstrap_weights(report.problems, 200, 0).double().numpy()
    difference = np.array(steered) - np.array(report["none"].per_problem)
    draws = weights @ difference / weights.sum(axis=1)
    assert report["steered"].minus_none == pytest.approx(difference.mean())
    assert [report["steered"].minus_none_low, report["steered"].minus_none_high] == pytest.approx(np.percentile(draws, [2.5, 97.5]))
    assert "steered" in report.format_table() and report.to_dict()["samples"] == SAMPLES


def test_random_control_keeps_norm_positions_and_gate():
    hook = lp.steering_hook(torch.arange(8.0), 2.0, layer=0, positions=[1, 2], absolute=True)
    control = random_control(hook, seed=1)
    assert torch.isclose(control.addition.norm(), hook.addition.norm()) and control.positions == [1, 2]
    assert abs(float(torch.nn.functional.cosine_similarity(control.addition, hook.addition, dim=0))) < 0.9
    assert control.hook_name == hook.hook_name and control.gate is hook.gate


def test_problems_the_vectors_were_built_from_are_refused(tiny_qwen3_model):
    problems = arithmetic_problems(ArithmeticConfig(n_problems=2))
    hook = lp.steering_hook(torch.ones(64), 1.0, layer=0, absolute=True)
    with pytest.raises(ValueError, match="used to build the vectors .*'lens_pivotal/arithmetic#1'"):
        evaluate_steering(tiny_qwen3_model, problems, {"s": hook}, built_from=["lens_pivotal/arithmetic#1"])
