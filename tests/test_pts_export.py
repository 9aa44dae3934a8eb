"""PTS exports: DPO counterparts are measured (a stub sampler and oracle where the answer is known), never guessed, each
rollout graded on the whole answer as the search grades it and sampled through the hooks attached to the bridge;
steering records hold the residual a plain HF model gives at the pivot position (in our convention: centred on a
LayerNorm model)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import family_params, hf_resid_states
from test_pts_search import PLAIN, TOKENIZER, pushed_bridge, pushed_reference

from lens_pivotal.pts import PivotalToken, Problem
from lens_pivotal.pts.export import CounterpartSearch, dpo_pairs, steering_records
from lens_pivotal.pts.problems import numeric_oracle
from lens_pivotal.pts.rollouts import HFRollouts, SamplingConfig, stop_token_ids
from lens_pivotal.pts.search import derive_seed, hf_backend

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does Tom have?"
ANSWER_SO_FAR = " The answer is"
CONTEXT = QUESTION + ANSWER_SO_FAR


class EmptyContinuations:
    """A sampler whose continuations are empty: a prefix's success is decided by the answer it ends."""

    def __init__(self) -> None:
        self.prefixes: list[list[int]] = []

    def sample(self, context, num_samples, max_new_tokens, seed):
        self.prefixes.append(list(context))
        return [[] for _ in range(num_samples)]


def exact(text: str, answer: str) -> bool:
    """Whether the whole answer is " The answer is" and then the reference answer."""
    return text == ANSWER_SO_FAR + answer


def row(model, token_id: int, prob_delta: float, item: str = "0") -> PivotalToken:
    return PivotalToken(
        model_id="tiny", query="Tom has 3 apples and buys 4 more.", pivot_context=CONTEXT,
        pivot_token=model.tokenizer.decode([token_id]), pivot_token_id=token_id, prob_before=0.5,
        prob_after=0.5 + prob_delta, task_type="arithmetic", dataset_id="toy", dataset_item_id=item,
    )  # fmt: skip


def test_counterparts_are_measured_and_unmeasurable_rows_left_out(tiny_qwen3_model):
    model = tiny_qwen3_model
    context = model.tokenizer(CONTEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        top = model(torch.tensor([context]))[0, -1].topk(8).indices.tolist()
    answer = model.tokenizer.decode([top[0]])  # the model's favourite next token is the right answer
    problems = [Problem(QUESTION, answer, item, "toy") for item in "01"] + [Problem("Why?", answer, "2", "toy")]
    rows = [
        row(model, top[0], +0.4),          # positive pivot: the answer; rejected must be a measured worse token
        row(model, top[7], -0.4),          # negative pivot: chosen must be a measured better token (the answer)
        row(model, top[7], +0.4, item="1"),  # positive pivot that is no better than the alternatives: left out
        row(model, top[0], +0.4, item="9"),  # no problem for it
        row(model, top[0], +0.4, item="2"),  # its context does not start with its question's prompt
    ]
    backend = EmptyContinuations()
    export = dpo_pairs(model, rows, problems, backend, oracle=exact, search=CounterpartSearch(candidates=4), progress=False)
    positive, negative = export.pairs
    assert positive["chosen"] == answer and positive["rejected"] != answer
    assert positive["metadata"]["prob_chosen"] == 1.0 and positive["metadata"]["prob_rejected"] == 0.0
    assert negative["chosen"] == answer and negative["rejected"] == model.tokenizer.decode([top[7]])
    assert all(pair["prompt"] == CONTEXT and pair["metadata"]["counterpart_verified"] for pair in export.pairs)
    assert context + [positive["metadata"]["rejected_token_id"]] in backend.prefixes  # it was sampled, not assumed
    assert export.skipped == 3 and "no candidate differs" in export.reasons[2]
    assert "no problem toy#9" in export.reasons[3]
    assert "does not start with the question's prompt in any of the named formats" in export.reasons[4]
    shifted = dataclasses.replace(rows[0], position=len(context) + 1)
    assert "re-tokenizes to" in dpo_pairs(model, [shifted], problems, backend, oracle=exact, progress=False).reasons[0]


@pytest.mark.parametrize("arch", family_params(("qwen3", "gpt2", "neox")))
def test_steering_records_hold_the_residual_at_the_pivot_position(family_models, arch):
    model, reference = family_models(arch)
    rows = [row(model, 5, 0.3), dataclasses.replace(row(model, 6, -0.3), pivot_context=CONTEXT + " 7.")]
    records = steering_records(model, rows, layer=1)
    for record, source in zip(records, rows):
        ids = model.tokenizer(source.pivot_context, add_special_tokens=False)["input_ids"]
        expected = hf_resid_states(reference, torch.tensor([ids]))[2][0, -1]
        torch.testing.assert_close(torch.tensor(record["vector"]), expected, atol=1e-4, rtol=1e-4)
        assert record["prob_delta"] == source.prob_delta and record["hook_name"] == "blocks.1.hook_resid_post"


SUM_SO_FAR = " 3 + 4 = 7"  # the answer before the pivot already holds the final number
WRONG_TAIL = TOKENIZER.encode(" 8")


class HalfWrongContinuations:
    """The first half of the samples end the answer as it is; the second half append " 8", a wrong final number."""

    def sample(self, context, num_samples, max_new_tokens, seed):
        return [[] if index < num_samples // 2 else WRONG_TAIL for index in range(num_samples)]


def test_counterparts_are_graded_on_the_whole_answer_as_the_search_grades(tiny_qwen3_model):
    """A pivot "5" turns the answer's 7 into 75. Graded on the pivot and continuation alone no rollout names 7 and no
    pair could be measured; graded on the whole answer, every estimate is the one a written-out loop gives."""
    model, tokenizer = tiny_qwen3_model, tiny_qwen3_model.tokenizer
    (five,) = tokenizer.encode("5")
    pivot = dataclasses.replace(row(model, five, -0.4), pivot_context=QUESTION + SUM_SO_FAR)
    problem, backend = Problem(QUESTION, "7", "0", "toy"), HalfWrongContinuations()
    search = CounterpartSearch(candidates=2, num_samples=4)
    export = dpo_pairs(model, [pivot], [problem], backend, oracle=numeric_oracle, search=search, prompt=PLAIN,
                       progress=False)
    (pair,) = export.pairs

    def success(token: int) -> float:
        context = tokenizer(QUESTION + SUM_SO_FAR, add_special_tokens=False)["input_ids"] + [token]
        continuations = backend.sample(context, search.num_samples, search.max_new_tokens, seed=0)
        whole_answers = [SUM_SO_FAR + tokenizer.decode([token] + continuation) for continuation in continuations]
        return sum(numeric_oracle(answer, problem.answer) for answer in whole_answers) / len(whole_answers)

    metadata = pair["metadata"]
    assert metadata["rejected_token_id"] == five and metadata["prob_rejected"] == success(five) == 0.0
    assert metadata["prob_chosen"] == success(metadata["chosen_token_id"]) == 0.5


def test_dpo_pairs_sample_through_a_hook_attached_to_the_bridge(family_models):
    """The backend is made before the hook is attached (as the CLI makes it); the rollouts must still be the hooked
    model's: those of a plain HF model edited by hand, graded on the whole answer."""
    bridge, reference = family_models("qwen3")
    tokenizer, search = bridge.tokenizer, CounterpartSearch(candidates=1, num_samples=2, max_new_tokens=3)
    problem, pivot = Problem(QUESTION, "7", "0", "toy"), row(bridge, 5, +0.4)
    backend = hf_backend(bridge, SamplingConfig())
    graded = []

    def recording_oracle(completion: str, answer: str) -> bool:
        graded.append(completion)
        return len(completion) % 2 == 0

    with pushed_bridge(bridge):
        dpo_pairs(bridge, [pivot], [problem], backend, oracle=recording_oracle, search=search, prompt=PLAIN,
                  progress=False)

    def reference_answers() -> list[str]:
        """The whole answers a written-out loop samples on the plain HF model: each top candidate, then the pivot."""
        context = tokenizer(CONTEXT, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            top = reference(torch.tensor([context])).logits[0, -1].topk(search.candidates + 1).indices.tolist()
        rollouts = HFRollouts(reference, stop_token_ids(tokenizer, reference), SamplingConfig())
        candidates = [token for token in top if token != pivot.pivot_token_id][: search.candidates]
        answers = []
        for token in [*candidates, pivot.pivot_token_id]:
            prefix, seed = context + [token], derive_seed(search.seed, problem, context + [token])
            for continuation in rollouts.sample(prefix, search.num_samples, search.max_new_tokens, seed):
                answers.append(ANSWER_SO_FAR + tokenizer.decode([token] + continuation, skip_special_tokens=True))
        return answers

    with pushed_reference(reference):
        assert graded == reference_answers()
    assert graded != reference_answers()  # the edit changes what is sampled
