"""PTS exports: DPO counterparts are measured (a stub sampler and oracle where the answer is known), never guessed;
steering records hold the residual a plain HF model gives at the pivot position."""

from __future__ import annotations

import dataclasses

import torch
from transformers import AutoModelForCausalLM

from lens_pivotal.pts import PivotalToken, Problem
from lens_pivotal.pts.export import CounterpartSearch, dpo_pairs, steering_records
from lens_pivotal.testing import tiny_qwen_dir

CONTEXT = "Tom has 3 apples and buys 4 more. How many apples does Tom have? The answer is"


class EmptyContinuations:
    """A sampler whose continuations are empty: a prefix's success is decided by its last token alone."""

    def __init__(self) -> None:
        self.prefixes: list[list[int]] = []

    def sample(self, context, num_samples, max_new_tokens, seed):
        self.prefixes.append(list(context))
        return [[] for _ in range(num_samples)]


def exact(text: str, answer: str) -> bool:
    return text == answer


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
    problems = [Problem("q", answer, "0", "toy"), Problem("q", answer, "1", "toy")]
    rows = [
        row(model, top[0], +0.4),          # positive pivot: the answer; rejected must be a measured worse token
        row(model, top[7], -0.4),          # negative pivot: chosen must be a measured better token (the answer)
        row(model, top[7], +0.4, item="1"),  # positive pivot that is no better than the alternatives: left out
        row(model, top[0], +0.4, item="9"),  # no problem for it
    ]
    backend = EmptyContinuations()
    export = dpo_pairs(model, rows, problems, backend, oracle=exact, search=CounterpartSearch(candidates=4), progress=False)
    positive, negative = export.pairs
    assert positive["chosen"] == answer and positive["rejected"] != answer
    assert positive["metadata"]["prob_chosen"] == 1.0 and positive["metadata"]["prob_rejected"] == 0.0
    assert negative["chosen"] == answer and negative["rejected"] == model.tokenizer.decode([top[7]])
    assert all(pair["prompt"] == CONTEXT and pair["metadata"]["counterpart_verified"] for pair in export.pairs)
    assert context + [positive["metadata"]["rejected_token_id"]] in backend.prefixes  # it was sampled, not assumed
    assert export.skipped == 2 and "no candidate differs" in export.reasons[2] and "no problem toy#9" in export.reasons[3]
    shifted = dataclasses.replace(rows[0], position=len(context) + 1)
    assert "re-tokenizes to" in dpo_pairs(model, [shifted], problems, backend, oracle=exact, progress=False).reasons[0]


def test_steering_records_hold_the_residual_at_the_pivot_position(tiny_qwen3_model):
    model = tiny_qwen3_model
    rows = [row(model, 5, 0.3), dataclasses.replace(row(model, 6, -0.3), pivot_context=CONTEXT + " 7.")]
    records = steering_records(model, rows, layer=1)
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir("qwen3"), dtype=torch.float32).eval()
    for record, source in zip(records, rows):
        ids = model.tokenizer(source.pivot_context, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected = reference(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0, -1]
        torch.testing.assert_close(torch.tensor(record["vector"]), expected, atol=1e-4, rtol=1e-4)
        assert record["prob_delta"] == source.prob_delta and record["hook_name"] == "blocks.1.hook_resid_post"
