"""Pivotal Token Search: bisection, a planted pivot found through the whole search, resume and determinism, and
rollouts through the hooks attached to the bridge (against a plain HF model edited by hand)."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace
from typing import Sequence

import pytest
import torch

from lens_pivotal.pts.output import progress_path
from lens_pivotal.pts.problems import Problem
from lens_pivotal.pts.prompts import PromptFormat
from lens_pivotal.pts.rollouts import HFRollouts, SamplingConfig, stop_token_ids
from lens_pivotal.pts.schema import load_pts
from lens_pivotal.pts.search import bisect_pivots, pick_solutions, search_pivotal_tokens
from lens_pivotal.testing import edited_block_output, qwen3_tokenizer

TOKENIZER = qwen3_tokenizer()
EOS = TOKENIZER.eos_token_id
(PIVOT,) = TOKENIZER.encode(" X")
FILLER = TOKENIZER.encode(" so the sum is")
RIGHT, WRONG = TOKENIZER.encode("9"), TOKENIZER.encode("7")  # one token each
PLAIN = PromptFormat(chat_template=False)


class PlantedPivotBackend:
    """Solutions are FILLER + answer + EOS. Once " X" is in the context every rollout answers right; before it, a
    quarter of the rollouts write " X" and answer right, the rest answer wrong. Once an answer is written, rollouts
    only stop. So P(success) is 0.25 until " X", 1 after it, and 0 after a wrong answer."""

    def __init__(self) -> None:
        self.calls = 0

    def sample(self, context: Sequence[int], num_samples: int, max_new_tokens: int, seed: int) -> list[list[int]]:
        self.calls += 1
        generated = list(context)
        if RIGHT[0] in generated or WRONG[0] in generated:
            return [[EOS]] * num_samples
        if PIVOT in generated:
            return [RIGHT + [EOS]] * num_samples
        good = FILLER[:2] + [PIVOT] + FILLER[2:] + RIGHT + [EOS]
        bad = FILLER + WRONG + [EOS]
        return [good if index < num_samples // 4 else bad for index in range(num_samples)]


def fake_model() -> SimpleNamespace:
    return SimpleNamespace(tokenizer=TOKENIZER, cfg=SimpleNamespace(model_name="fake"))


PROBLEM = Problem("What is 4 + 5?", "9", "0", "test/planted")


def test_bisection_finds_each_step_and_skips_flat_spans():
    def probability(prefix):
        return 0.2 if len(prefix) <= 5 else 0.9 if len(prefix) <= 12 else 0.85

    assert list(bisect_pivots(probability, list(range(20)), 0.2)) == [(5, 0.2, 0.9)]

    def down_then_up(prefix):
        return {True: 0.5, False: 0.0}[len(prefix) < 3] if len(prefix) < 9 else 1.0

    assert list(bisect_pivots(down_then_up, list(range(16)), 0.2)) == [(2, 0.5, 0.0), (8, 0.0, 1.0)]
    assert list(bisect_pivots(lambda prefix: 0.5 + 0.01 * len(prefix), list(range(16)), 0.2)) == []


def test_search_finds_the_planted_pivot_and_the_wrong_answer():
    backend = PlantedPivotBackend()
    rows = list(search_pivotal_tokens(fake_model(), [PROBLEM], backend=backend, num_samples=8, max_new_tokens=16,
                                      solutions_per_problem=2, prompt=PLAIN, progress=False))
    prompt_length = len(TOKENIZER(PROBLEM.question)["input_ids"])
    found = {(row.pivot_token_id, row.prob_before, row.prob_after, row.position) for row in rows}
    assert found == {(PIVOT, 0.25, 1.0, prompt_length + 2), (WRONG[0], 0.25, 0.0, prompt_length + len(FILLER))}
    positive = next(row for row in rows if row.is_positive)
    assert positive.pivot_token == " X" and positive.pivot_context == PROBLEM.question + "".join(
        TOKENIZER.decode([token]) for token in FILLER[:2])
    assert positive.query == PROBLEM.question and positive.model_id == "fake" and positive.dataset_item_id == "0"
    assert backend.calls < 12  # estimates are cached per prefix
    prompt_ids = TOKENIZER(PROBLEM.question)["input_ids"]
    solutions = {  # the whole sampled solution each row was found on, as the backend wrote it
        PIVOT: TOKENIZER.decode(prompt_ids + FILLER[:2] + [PIVOT] + FILLER[2:] + RIGHT + [EOS]),
        WRONG[0]: TOKENIZER.decode(prompt_ids + FILLER + WRONG + [EOS]),
    }
    assert {row.pivot_token_id: row.solution for row in rows} == solutions


def test_problems_outside_the_baseline_range_are_skipped(tmp_path):
    out = tmp_path / "rows.jsonl"
    rows = list(search_pivotal_tokens(fake_model(), [PROBLEM], backend=PlantedPivotBackend(), num_samples=8,
                                      max_new_tokens=16, min_prob=0.3, prompt=PLAIN, out=out, progress=False))
    assert rows == []
    record = json.loads(progress_path(out).read_text().splitlines()[1])
    assert record["status"] == "baseline_out_of_range" and record["baseline"] == 0.25


def test_pick_solutions_alternates_outcomes_and_skips_repeats():
    solutions = [[1], [1], [2], [3], [4]]
    assert pick_solutions(solutions, lambda s: s[0] % 2 == 1, 3) == [[1], [2], [3]]
    assert pick_solutions(solutions, lambda s: True, 10) == [[1], [2], [3], [4]]


def parity_oracle(completion: str, answer: str) -> bool:
    """Random-weight models cannot do arithmetic; this oracle gives them a success rate near 1/2."""
    return len(completion) % 2 == 0


@pytest.fixture(scope="module")
def tiny_model(tiny_qwen3_model):
    """conftest's tiny random Qwen3 bridge: its HF model samples the rollouts."""
    return tiny_qwen3_model


TINY_PROBLEMS = [Problem(f"Say something about {topic}.", "0", str(index), "test/tiny")
                 for index, topic in enumerate(["cats", "rain", "maps"])]


def tiny_search(model, **overrides):
    settings = dict(oracle=parity_oracle, num_samples=8, max_new_tokens=8, min_prob=0.0, max_prob=1.0,
                    solutions_per_problem=2, seed=3, prompt=PLAIN, progress=False)
    return search_pivotal_tokens(model, TINY_PROBLEMS, **(settings | overrides))


def without_timestamps(rows) -> list[dict]:
    return [{key: value for key, value in row.to_dict().items() if key != "timestamp"} for row in rows]


@pytest.fixture(scope="module")
def reference(tiny_model) -> list[dict]:
    """The rows of one uninterrupted search."""
    return without_timestamps(tiny_search(tiny_model))


def test_same_seed_same_rows_other_seed_other_rows(tiny_model, reference):
    assert len(reference) >= 3
    assert without_timestamps(tiny_search(tiny_model)) == reference
    assert without_timestamps(tiny_search(tiny_model, seed=4)) != reference


def test_resume_after_interrupt_gives_the_same_rows_once(tiny_model, reference, tmp_path):
    out = tmp_path / "resumed.jsonl"
    first_problem = list(itertools.islice(tiny_search(tiny_model, out=out), 1))  # stops after problem 0 is written
    assert first_problem
    with out.open("a") as handle:  # a crash after writing part of problem 1: its row is recorded nowhere else
        handle.write(json.dumps(first_problem[0].to_dict() | {"dataset_item_id": "1"}) + "\n" + '{"model_id": "fa')
    new_rows = without_timestamps(tiny_search(tiny_model, out=out))
    assert new_rows == [row for row in reference if row["dataset_item_id"] != "0"]
    assert without_timestamps(load_pts(out)) == reference
    assert list(tiny_search(tiny_model, out=out)) == []  # nothing left to do
    with pytest.raises(ValueError, match=r"other search settings \(differing: \['search'\]\)"):
        list(tiny_search(tiny_model, out=out, seed=9))


def test_output_without_progress_record_is_not_appended_to(tmp_path):
    out = tmp_path / "someone_elses.jsonl"
    out.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="has no progress file someone_elses.progress.jsonl"):
        list(search_pivotal_tokens(fake_model(), [PROBLEM], backend=PlantedPivotBackend(), prompt=PLAIN, out=out, progress=False))
    assert out.read_text() == '{"a": 1}\n'


PUSH = 4 * torch.randn(64, generator=torch.Generator().manual_seed(0))  # tiny Qwen3's d_model: an intervention


def pushed_bridge(bridge):
    """``PUSH`` added to block 1's output through the bridge's hook point, as a user steers or ablates."""
    return bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda resid, hook: resid + PUSH)])


def pushed_reference(reference):
    """The same edit on a plain HF model: a torch forward hook on its decoder layer 1."""
    return edited_block_output(reference, 1, lambda hidden: hidden + PUSH)


def test_a_search_with_a_hook_attached_samples_the_hooked_model(family_models):
    bridge, reference = family_models("qwen3")
    reference_backend = HFRollouts(reference, stop_token_ids(bridge.tokenizer, reference), SamplingConfig())

    def graded_texts(backend=None) -> list[str]:
        """Every solution the search's oracle grades, in order: what it sampled."""
        texts = []

        def oracle(completion: str, answer: str) -> bool:
            texts.append(completion)
            return parity_oracle(completion, answer)

        list(search_pivotal_tokens(bridge, TINY_PROBLEMS[:1], oracle=oracle, num_samples=3, max_new_tokens=4,
                                   min_prob=0.0, max_prob=1.0, solutions_per_problem=1, prompt=PLAIN, backend=backend,
                                   progress=False))
        return texts

    with pushed_bridge(bridge):
        searched = graded_texts()
    with pushed_reference(reference):
        expected = graded_texts(reference_backend)
    assert searched == expected
    assert graded_texts(reference_backend) != expected  # the edit changes what is sampled


def test_solutions_of_rows_written_without_them_are_recovered(tiny_model, tmp_path):
    from dataclasses import replace

    from lens_pivotal.pts.solutions import recover_solutions

    out = tmp_path / "rows.jsonl"
    rows = list(tiny_search(tiny_model, out=out))
    settings = json.loads(progress_path(out).read_text().splitlines()[0])["settings"]
    bare = [replace(row, solution=None) for row in rows]
    assert recover_solutions(tiny_model, bare, TINY_PROBLEMS, settings, oracle=parity_oracle) == rows
    altered = replace(bare[0], pivot_token_id=bare[0].pivot_token_id + 1)
    assert recover_solutions(tiny_model, [altered], TINY_PROBLEMS, settings, oracle=parity_oracle)[0].solution is None
