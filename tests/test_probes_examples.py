"""Probe examples from PTS rows: positives at the end of pivot_context, negatives in the answer span, grouped splits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import lens_pivotal as lp
from lens_pivotal.probes import probe_examples

FIXTURES = Path(__file__).parent / "fixtures"
REAL_ROWS = FIXTURES / "qwen3_0.6b_real_rows.jsonl"
SEED_A_LABELS = FIXTURES / "seed_a_probe_label_examples.jsonl"


def test_real_rows_give_seed_a_positions(qwen3_tok):
    examples = probe_examples(qwen3_tok, lp.load_pts(REAL_ROWS), negatives="algoverse")  # the recipe seed A used
    seed_a = [json.loads(line) for line in SEED_A_LABELS.read_text().splitlines()][3]
    seed_a_ids = qwen3_tok(seed_a["text"], add_special_tokens=False)["input_ids"]
    assert seed_a["labels"].index(1) == 38
    multiply = [i for i, text in enumerate(examples.texts) if text.endswith("multiply ") and examples.labels[i] == 1]
    assert len(multiply) == 1
    example = multiply[0]
    assert examples.positions[example] == 38
    ids = examples.token_ids[examples.text_index[example]]
    assert ids[:39] == seed_a_ids[:39]
    assert qwen3_tok.decode([ids[38]]) == " multiply" and ids[39] == 220


def test_real_rows_positive_is_the_last_context_token(qwen3_tok):
    rows = lp.load_pts(REAL_ROWS)
    examples = probe_examples(qwen3_tok, rows, negatives="nearest")  # three v1 rows: too few texts to match on
    assert sum(examples.labels) == 3 and not examples.mismatches
    for index in [i for i, label in enumerate(examples.labels) if label == 1]:
        row = rows[examples.source_rows[index]]
        ids = examples.token_ids[examples.text_index[index]]
        position = examples.positions[index]
        assert qwen3_tok.decode(ids[: position + 1]) == row.pivot_context
        assert ids[position + 1] == row.pivot_token_id
    assert sorted(set(examples.groups)) == ["codelion/optillmbench#3", "openai/gsm8k#1"]


def test_rows_on_one_solution_share_one_tokenization(qwen3_tok, synthetic_rows):
    examples = probe_examples(qwen3_tok, synthetic_rows)
    assert len(examples.token_ids) == 8  # two pivots per problem, one text each
    assert sum(examples.labels) == 16
    for text in range(len(examples.token_ids)):
        members = [i for i, t in enumerate(examples.text_index) if t == text]
        assert len({examples.groups[i] for i in members}) == 1
        assert [examples.positions[i] for i in members] == sorted(examples.positions[i] for i in members)


def test_algoverse_negatives_lie_in_each_problems_answer_and_never_on_a_positive(qwen3_tok, synthetic_rows):
    examples = probe_examples(qwen3_tok, synthetic_rows, negatives="algoverse", negatives_per_positive=3, seed=1)
    for text, ids in enumerate(examples.token_ids):
        members = [i for i, t in enumerate(examples.text_index) if t == text]
        positives = {examples.positions[i] for i in members if examples.labels[i] == 1}
        negatives = [examples.positions[i] for i in members if examples.labels[i] == 0]
        query_tokens = len(qwen3_tok(synthetic_rows[2 * text].query, add_special_tokens=False)["input_ids"])
        assert len(negatives) == 6 and not positives & set(negatives)
        assert all(query_tokens - 1 <= position < len(ids) - 1 for position in negatives)


def answer_indices_by_hand(tokenizer, examples, label):
    """Each example's index in its answer, counted from the re-tokenized query and chat-free synthetic text."""
    indices = []
    for text, position, value in zip(examples.texts, examples.positions, examples.labels):
        if value == label:
            query = text[: text.index("?") + 1]
            indices.append(position + 1 - len(tokenizer(query, add_special_tokens=False)["input_ids"]))
    return sorted(indices)


def cut_at_last_pivot(rows):
    """The rows as a v1 PTS file holds them: no ``solution``, so each text ends at its last pivot."""
    return [replace(row, solution=None) for row in rows]


def test_matched_negatives_sit_at_the_positives_answer_indices(qwen3_tok, synthetic_rows):
    """Each positive gets a negative at its own answer index, from any problem; cut at their last pivots, the texts
    leave some positives without one, and those are set aside (or matched to the nearest index)."""
    examples = probe_examples(qwen3_tok, synthetic_rows, seed=2)
    assert examples.negatives == "matched" and examples.labels.count(0) == examples.labels.count(1) == 16
    with pytest.warns(UserWarning, match=r"positives had no negative at their answer index"):
        dropped = probe_examples(qwen3_tok, cut_at_last_pivot(synthetic_rows), seed=2)
    kept = probe_examples(qwen3_tok, cut_at_last_pivot(synthetic_rows), negatives="nearest", seed=2)
    assert dropped.unmatched_positives > 0 and sum(dropped.labels) + dropped.unmatched_positives == 16 == sum(kept.labels)
    assert dropped.position_ks == 0 < kept.position_ks
    assert answer_indices_by_hand(qwen3_tok, dropped, 0) == answer_indices_by_hand(qwen3_tok, dropped, 1)
    assert answer_indices_by_hand(qwen3_tok, examples, 0) == answer_indices_by_hand(qwen3_tok, examples, 1)
    assert examples.position_ks == 0.0
    negatives = {(examples.groups[i], examples.positions[i]) for i, label in enumerate(examples.labels) if label == 0}
    assert len({group for group, _ in negatives}) > 1  # drawn across the dataset's problems
    assert not negatives & {(examples.groups[i], examples.positions[i]) for i, label in enumerate(examples.labels) if label}


def test_rows_with_solutions_are_read_on_the_whole_solution(qwen3_tok, synthetic_rows):
    rows = synthetic_rows
    examples = probe_examples(qwen3_tok, rows, negatives="nearest", negatives_per_positive=100)  # every non-pivotal state
    assert sorted(set(examples.texts)) == sorted({row.solution for row in rows})
    for text, ids in enumerate(examples.token_ids):
        members = [i for i, t in enumerate(examples.text_index) if t == text]
        positives = {examples.positions[i] for i in members if examples.labels[i] == 1}
        query_tokens = len(qwen3_tok(rows[2 * text].query, add_special_tokens=False)["input_ids"])
        expected = set(range(query_tokens - 1, len(ids) - 1)) - positives
        assert {examples.positions[i] for i in members if examples.labels[i] == 0} == expected
        assert max(expected) > max(positives)  # states after the last pivot
    cut = probe_examples(qwen3_tok, rows, negatives="algoverse", negatives_per_positive=100)
    assert sorted(set(cut.texts)) == sorted({row.pivot_context + row.pivot_token for row in rows[1::2]})
    assert probe_examples(qwen3_tok, rows, negatives="algoverse").position_ks > 0.15


def test_position_ks_equals_scipy(qwen3_tok, synthetic_rows):
    from scipy.stats import ks_2samp

    examples = probe_examples(qwen3_tok, synthetic_rows, negatives="algoverse", negatives_per_positive=2, seed=3)
    labels = examples.labels
    indices = examples.answer_indices
    expected = ks_2samp([i for i, y in zip(indices, labels) if y], [i for i, y in zip(indices, labels) if not y]).statistic
    assert examples.position_ks == pytest.approx(expected, abs=1e-12) and expected > 0.15
    assert indices == [examples.positions[i] + 1 - examples.answer_starts[examples.text_index[i]] for i in range(len(examples))]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(lp.pts.SHIPPED_DATASETS))
def test_shipped_datasets_examples_are_not_confounded_by_position(embedded_dir, name):
    """The default recipe keeps the answer-index distributions of positives and negatives within KS 0.15, negatives
    after the last pivot included; the Algoverse recipe on the same rows does not."""
    from scipy.stats import ks_2samp
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    rows = lp.load_pts(name)
    assert all(row.solution is not None for row in rows)
    matched, cut = (probe_examples(tokenizer, rows, negatives=recipe) for recipe in ("matched", "algoverse"))
    for examples in (matched, cut):
        by_label = [[index for index, label in zip(answer_indices_by_hand_chat(tokenizer, examples), examples.labels) if label == value] for value in (1, 0)]
        assert examples.position_ks == pytest.approx(ks_2samp(*by_label).statistic, abs=1e-12)
    assert matched.position_ks <= 0.15 < cut.position_ks
    last_pivot = {}
    for text, position, label in zip(matched.text_index, matched.positions, matched.labels):
        if label:
            last_pivot[text] = max(position, last_pivot.get(text, -1))
    assert any(not label and position > last_pivot[text] for text, position, label in zip(matched.text_index, matched.positions, matched.labels))


def answer_indices_by_hand_chat(tokenizer, examples):
    """Each example's index in its answer: tokens after the last ``<|im_start|>assistant\n`` of its text."""
    indices = []
    for text, position in zip(examples.texts, examples.positions):
        header = text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
        indices.append(position + 1 - len(tokenizer(text[:header], add_special_tokens=False)["input_ids"]))
    return indices


def test_negative_ratio_and_seed(qwen3_tok, synthetic_rows):
    one = probe_examples(qwen3_tok, synthetic_rows, seed=0)
    again = probe_examples(qwen3_tok, synthetic_rows, seed=0)
    other = probe_examples(qwen3_tok, synthetic_rows, seed=5)
    none = probe_examples(qwen3_tok, synthetic_rows, negatives_per_positive=0)
    assert one.labels.count(0) == one.labels.count(1) == 16
    assert one.positions == again.positions and one.positions != other.positions
    assert none.labels == [1] * 16


def test_a_pivot_that_does_not_retokenize_is_reported_not_kept(qwen3_tok, synthetic_rows):
    wrong_id = replace(synthetic_rows[0], pivot_token_id=synthetic_rows[0].pivot_token_id + 1)
    wrong_position = replace(synthetic_rows[2], position=3)
    examples = probe_examples(qwen3_tok, [wrong_id, wrong_position, *synthetic_rows[4:]])
    assert len(examples.mismatches) == 2
    assert "row 0 (synthetic#0" in examples.mismatches[0] and "not pivot_token_id" in examples.mismatches[0]
    assert "row 1 (synthetic#1" in examples.mismatches[1] and "recorded position 3" in examples.mismatches[1]
    assert sum(examples.labels) == len(synthetic_rows) - 4  # rows 1 and 3 left out, rows 0 and 2 not mapped


def test_cache_runs_each_text_once_in_example_order(tiny_qwen3_model, synthetic_rows):
    examples = probe_examples(tiny_qwen3_model, synthetic_rows[:6])
    acts = examples.cache(tiny_qwen3_model, progress=False)
    assert acts.shape == (3, len(examples), 64)
    example = 4
    direct = lp.cache_resid_post(
        tiny_qwen3_model, [examples.token_ids[examples.text_index[example]]], [examples.positions[example]], progress=False
    )
    assert (acts[:, example] - direct[:, 0]).abs().max() < 1e-5


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda tok, rows: probe_examples(tok, []), ValueError, "rows is empty"),
        (lambda tok, rows: probe_examples(tok, rows, negatives_per_positive=-1), ValueError, "negatives_per_positive"),
        (lambda tok, rows: probe_examples(tok, rows, negatives="random"), ValueError, "negatives must be one of"),
        (lambda tok, rows: probe_examples(tok, [rows[0], {"query": "x"}]), TypeError, r"rows\[1\] is a dict"),
        (lambda tok, rows: probe_examples(tok, "missing.jsonl"), FileNotFoundError, "does not exist"),
    ],
)
def test_bad_input_errors(qwen3_tok, synthetic_rows, call, error, message):
    with pytest.raises(error, match=message) as raised:
        call(qwen3_tok, synthetic_rows)
    assert type(raised.value) is error


@pytest.mark.slow
def test_shipped_dataset_maps_all_but_the_two_retokenized_rows(embedded_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    with pytest.warns(UserWarning, match="26 of 153 positives had no negative"):
        examples = probe_examples(tokenizer, lp.pts.load_shipped_pts())
    # 34 pivots follow a context another solution's pivot already follows (e.g. "To" and " The" as the first answer
    # token); 26 are the answer's first token where no problem without such a pivot is left to give a negative.
    assert examples.repeated_positives == 34 and examples.unmatched_positives == 26
    assert sum(examples.labels) == examples.labels.count(0) == 127 and len(set(examples.groups)) == 45
    assert len(examples.mismatches) == 2 and all("re-tokenizes differently" in m for m in examples.mismatches)
    algoverse = probe_examples(tokenizer, lp.pts.load_shipped_pts(), negatives="algoverse")
    # answers cut at their last pivot leave some problems fewer non-pivotal states than pivots
    assert sum(algoverse.labels) == 153 and algoverse.labels.count(0) == 143 and len(set(algoverse.groups)) == 46
    header = "<|im_end|>\n<|im_start|>assistant\n"
    for text, position in zip(examples.text_index, examples.positions):
        ids = examples.token_ids[text]
        predicted_so_far = tokenizer.decode(ids[: position + 2])
        assert predicted_so_far.count(header) == 2, "the next token of every example lies in the model's answer"


def test_solutions_sharing_a_prefix_never_make_a_positive_state_a_negative(qwen3_tok, synthetic_rows):
    first = replace(synthetic_rows[0], solution=None)
    ids = lambda text: qwen3_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    branch = replace(first, pivot_token=" maybe", pivot_token_id=ids(" maybe")[0])  # another pivot after the same context
    longer = replace(first, pivot_context=first.pivot_context + " so", pivot_token=" ok", pivot_token_id=ids(" ok")[0])
    examples = probe_examples(qwen3_tok, [first, branch, longer], negatives="nearest", negatives_per_positive=50)
    # branch's only state of its own is its (repeated) positive, so its text holds no example
    assert len(examples.token_ids) == 2 and examples.repeated_positives == 1 and sum(examples.labels) == 2
    states: dict[tuple, int] = {}
    for text, position, label in zip(examples.text_index, examples.positions, examples.labels):
        state = tuple(examples.token_ids[text][: position + 1])
        assert state not in states, "each state appears once, with one label"
        states[state] = label
