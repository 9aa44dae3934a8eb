"""Problems and oracles: the arithmetic generator, final-number parsing, GSM8K answers, JSONL problem files."""

from __future__ import annotations

import json
import re

import pytest

from lens_pivotal.pts.problems import (
    MULTISTEP_DATASET_ID,
    ArithmeticConfig,
    ProblemFileError,
    arithmetic_problems,
    extract_final_number,
    load_problems_jsonl,
    numeric_oracle,
    parse_gsm8k_answer,
)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("4 + 13 = 17. The answer is 17.", "17"),
        ("The answer is 17. Then 4 more makes 21", "17"),
        ("so the answer is: $1,234.", "1234"),
        ("First 3, then 5, finally 8", "8"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### 5\nThe answer is 6", "5"),
        ("It drops to -4 degrees", "-4"),
        ("It costs 2.50 dollars", "2.50"),
        ("I do not know", None),
    ],
)
def test_extract_final_number(completion, expected):
    assert extract_final_number(completion) == expected


def test_numeric_oracle_compares_values_not_strings():
    assert numeric_oracle("The answer is 17.", "17")
    assert numeric_oracle("that is 17.0 apples", "17")
    assert numeric_oracle("#### 1,200", "1200")
    assert not numeric_oracle("The answer is 171.", "17")
    assert not numeric_oracle("no idea", "17")


def test_gsm8k_answer_after_the_marker():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72 clips.\n#### 1,072"
    assert parse_gsm8k_answer(solution) == "1072"
    with pytest.raises(ValueError, match="no '####'"):
        parse_gsm8k_answer("The answer is 4")


def evaluate(question: str) -> int:
    """Recompute a generated problem's answer from its sentences."""
    total = int(re.match(r"\w+ has (\d+)", question).group(1))
    for sentence in question.split(". ")[1:]:
        number = re.search(r"\d+", sentence)
        if number is None:
            continue
        operand = int(number.group())
        if "times as many" in sentence:
            total *= operand
        elif re.search(r"gives away|loses|sells", sentence):
            total -= operand
        else:
            total += operand
    return total


def test_multistep_problems_draw_their_operation_count_and_carry_their_own_dataset_id():
    config = ArithmeticConfig(n_problems=40, n_operations=2, max_operations=3, operations=("+", "-"), seed=1,
                              dataset_id=MULTISTEP_DATASET_ID)
    problems = arithmetic_problems(config)
    assert {problem.question.count(".") - 1 for problem in problems} == {2, 3}
    assert all(int(problem.answer) == evaluate(problem.question) for problem in problems)
    assert {problem.dataset_id for problem in problems} == {MULTISTEP_DATASET_ID}
    with pytest.raises(ValueError, match="max_operations"):
        ArithmeticConfig(n_operations=3, max_operations=2)


def test_arithmetic_problems_are_seeded_exact_and_prefix_stable():
    config = ArithmeticConfig(n_problems=30, n_operations=3, operand_range=(2, 9), seed=4)
    problems = arithmetic_problems(config)
    assert problems == arithmetic_problems(config)
    assert problems != arithmetic_problems(ArithmeticConfig(n_problems=30, n_operations=3, operand_range=(2, 9), seed=5))
    assert arithmetic_problems(ArithmeticConfig(n_problems=10, n_operations=3, operand_range=(2, 9), seed=4)) == problems[:10]
    assert [problem.item_id for problem in problems] == [str(index) for index in range(30)]
    for problem in problems:
        assert problem.question.count(".") == 4  # start + 3 operations
        assert int(problem.answer) == evaluate(problem.question) >= 0


def test_arithmetic_knobs_are_validated():
    only_addition = arithmetic_problems(ArithmeticConfig(n_problems=5, operations=("+",)))
    assert all("times" not in problem.question for problem in only_addition)
    with pytest.raises(ValueError, match="operations"):
        ArithmeticConfig(operations=("/",))
    with pytest.raises(ValueError, match="operand_range"):
        ArithmeticConfig(operand_range=(5, 2))


def test_problems_jsonl_loads_ids_and_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "2+2?", "answer": 4}\n\n{"question": "3+3?", "answer": "6", "id": "b"}\n')
    first, second = load_problems_jsonl(path)
    assert (first.answer, first.item_id, first.dataset_id) == ("4", "0", "p.jsonl")
    assert (second.answer, second.item_id) == ("6", "b")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "not valid JSON"),
        ('{"answer": 3}', "field 'question' must be a non-empty string"),
        ('{"question": "  ", "answer": 3}', "field 'question'"),
        ('{"question": "q", "answer": null}', "field 'answer' must be"),
        ('{"question": "q", "answer": [3]}', "field 'answer' must be"),
        ('{"question": "q", "answer": 3, "id": 1.5}', "field 'id' must be"),
        ('{"question": "q", "answer": 3, "id": 0}', "problem id '0' appears more than once"),
    ],
)
def test_problems_jsonl_errors_name_line_and_field(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "ok?", "answer": 1}) + "\n" + line + "\n")
    with pytest.raises(ProblemFileError, match=re.escape(message)) as error:
        load_problems_jsonl(path)
    if "more than once" not in message:
        assert str(error.value).startswith(f"{path}:2: ")
