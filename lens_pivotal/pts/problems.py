"""Problems with exact answers for Pivotal Token Search, and the oracles that grade a completion.

Three sources: a seeded generator of arithmetic word problems (offline), GSM8K through ``datasets`` (online,
only when asked for), and a JSONL file of ``{"question": ..., "answer": ...}`` objects.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

from lens_pivotal._io import JsonLine, jsonl_lines

ARITHMETIC_DATASET_ID = "lens_pivotal/arithmetic"
MULTISTEP_DATASET_ID = "lens_pivotal/multistep_arithmetic"
GSM8K_DATASET_ID = "openai/gsm8k"

Oracle = Callable[[str, str], bool]
"""``oracle(completion, answer) -> bool``: does the completion reach the reference answer?"""


@dataclass(frozen=True)
class Problem:
    """One question with a reference answer, and where it came from (the PTS ``dataset_id``/``dataset_item_id``)."""

    question: str
    answer: str
    item_id: str
    dataset_id: str
    task_type: str = "generic"

    @property
    def group(self) -> str:
        """This problem's name, as PTS rows of it are grouped (:func:`group_name`)."""
        return group_name((self.dataset_id, self.item_id))


def group_name(key: tuple[str, str]) -> str:
    """The problem name of a ``(dataset_id, item_id)`` key (a PTS row's ``group_key``, a :class:`Problem`'s), as in
    ``ProbeExamples.groups``, ``heldout_groups`` and ``SteeringVectors.config.groups``."""
    dataset, item = key
    return f"{dataset}#{item}" if dataset else item


class ProblemFileError(ValueError):
    """A problems JSONL file has a line that is not a valid problem; the message names the line and field."""


# Each template reads the running total's owner ({name}) and item, and one operand ({n}).
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": ("{name} buys {n} more {item}.", "{name} finds {n} more {item}.", "A friend gives {name} {n} more {item}."),
    "-": ("{name} gives away {n} {item}.", "{name} loses {n} {item}.", "{name} sells {n} {item}."),
    "*": ("{name} then gets {n} times as many {item} as before.",),
}
DEFAULT_NAMES = ("Tom", "Anna", "Ravi", "Mei", "Lucas", "Sara", "Omar", "Julia")
DEFAULT_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells")


@dataclass(frozen=True)
class ArithmeticConfig:
    """Difficulty knobs of the arithmetic word-problem generator.

    Attributes:
        n_problems: how many problems to generate.
        n_operations: operations applied after the starting amount (more = harder).
        operand_range: inclusive range of every number in the problem.
        max_operations: with it, each problem draws its operation count from ``n_operations..max_operations``.
        operations: which of ``+``, ``-``, ``*`` may appear; ``-`` is only used when the total stays >= 0.
        templates: sentence templates per operation (``{name}``, ``{n}``, ``{item}``).
        seed: the generator's seed; the same config always yields the same problems.
        dataset_id: the problems' ``dataset_id`` (e.g. ``MULTISTEP_DATASET_ID``, so two families never share a
            problem name).
    """

    n_problems: int = 100
    n_operations: int = 2
    max_operations: int | None = None
    operand_range: tuple[int, int] = (2, 20)
    operations: tuple[str, ...] = ("+", "-", "*")
    templates: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    names: tuple[str, ...] = DEFAULT_NAMES
    items: tuple[str, ...] = DEFAULT_ITEMS
    seed: int = 0
    dataset_id: str = ARITHMETIC_DATASET_ID

    def __post_init__(self) -> None:
        low, high = self.operand_range
        if not 0 <= low <= high:
            raise ValueError(f"operand_range must be (low, high) with 0 <= low <= high, got {self.operand_range}")
        unknown = set(self.operations) - set(self.templates)
        if unknown or not self.operations:
            raise ValueError(f"operations must be a non-empty subset of {sorted(self.templates)}, got {self.operations}")
        if self.n_operations < 1 or self.n_problems < 0:
            raise ValueError("n_operations must be >= 1 and n_problems >= 0")
        if self.max_operations is not None and self.max_operations < self.n_operations:
            raise ValueError(f"max_operations ({self.max_operations}) must be at least n_operations ({self.n_operations})")


def _arithmetic_problem(config: ArithmeticConfig, rng: random.Random, index: int) -> Problem:
    low, high = config.operand_range
    name, item = rng.choice(config.names), rng.choice(config.items)
    total = rng.randint(low, high)
    sentences = [f"{name} has {total} {item}."]
    n_operations = config.n_operations
    if config.max_operations is not None:
        n_operations = rng.randint(config.n_operations, config.max_operations)
    for _ in range(n_operations):
        operand = rng.randint(low, high)
        allowed = [op for op in config.operations if op != "-" or operand <= total] or ["+"]
        operation = rng.choice(allowed)
        total = {"+": total + operand, "-": total - operand, "*": total * operand}[operation]
        sentences.append(rng.choice(config.templates[operation]).format(name=name, n=operand, item=item))
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(sentences), str(total), str(index), config.dataset_id, "arithmetic")


def arithmetic_problems(config: ArithmeticConfig | None = None) -> list[Problem]:
    """Seeded arithmetic word problems with exact integer answers (``dataset_id`` ``lens_pivotal/arithmetic``)."""
    config = config or ArithmeticConfig()
    rng = random.Random(config.seed)
    return [_arithmetic_problem(config, rng, index) for index in range(config.n_problems)]


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_ANSWER_MARKERS = (re.compile(r"####\s*\$?\s*(" + _NUMBER + ")"), re.compile(r"answer is[^\d-]{0,20}?(" + _NUMBER + ")", re.I))


def extract_final_number(text: str) -> str | None:
    """The model's final answer: the number after the last ``####``, else after the last "answer is", else the last number.

    Thousands separators are removed and a trailing sentence period is not part of the number
    (``"The answer is 1,234."`` → ``"1234"``). ``None`` when the text has no number.
    """
    for marker in _ANSWER_MARKERS:
        found = marker.findall(text)
        if found:
            return found[-1].replace(",", "")
    numbers = re.findall(_NUMBER, text)
    return numbers[-1].replace(",", "") if numbers else None


def _as_fraction(number: str) -> Fraction | None:
    try:
        return Fraction(number.replace(",", "").strip().lstrip("$"))
    except (ValueError, ZeroDivisionError):
        return None


def numeric_oracle(completion: str, answer: str) -> bool:
    """True when the completion's final number (see :func:`extract_final_number`) equals ``answer`` exactly."""
    found = extract_final_number(completion)
    expected = _as_fraction(answer)
    return found is not None and expected is not None and _as_fraction(found) == expected


def parse_gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K reference solution: the text after ``####``, without thousands separators.

    Raises:
        ValueError: the solution has no ``####``.
    """
    if "####" not in solution:
        raise ValueError(f"GSM8K solution has no '####' answer marker: {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def gsm8k_problems(split: str = "test", limit: int | None = None) -> list[Problem]:
    """GSM8K (``openai/gsm8k``, config ``main``) through ``datasets``; needs the network or a warm HF cache.

    ``dataset_item_id`` is the row index within ``split``, as in the public PTS sets.
    """
    from datasets import load_dataset

    rows = load_dataset(GSM8K_DATASET_ID, "main", split=split)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return [
        Problem(row["question"], parse_gsm8k_answer(row["answer"]), str(index), GSM8K_DATASET_ID)
        for index, row in enumerate(rows)
    ]


def _problem_from_line(line: JsonLine, dataset_id: str) -> Problem:
    where, number, row = line.where, line.number, line.value
    if line.error is not None:
        raise ProblemFileError(line.describe_error())
    if not isinstance(row, dict):
        raise ProblemFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ProblemFileError(f"{where}: field 'question' must be a non-empty string, got {question!r}")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
        raise ProblemFileError(f"{where}: field 'answer' must be a non-empty string or a number, got {answer!r}")
    item_id = row.get("id", number - 1)
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise ProblemFileError(f"{where}: field 'id' must be a string or an integer, got {item_id!r}")
    return Problem(question, str(answer).strip(), str(item_id), dataset_id, str(row.get("task_type", "generic")))


def load_problems_jsonl(path: str | os.PathLike, *, dataset_id: str | None = None) -> list[Problem]:
    """Problems from a JSONL file of ``{"question": str, "answer": str | number}`` objects (``id`` optional).

    ``dataset_item_id`` is the row's ``id``, else its 0-based index among the file's lines; ``dataset_id``
    defaults to the file name. Blank lines are skipped.

    Raises:
        ProblemFileError: a line that is not JSON or lacks a valid field; the message names the line and field.
        ValueError: two problems share an id.
    """
    path = Path(path)
    dataset_id = dataset_id or path.name
    problems = [_problem_from_line(line, dataset_id) for line in jsonl_lines(path)]
    ids = [problem.item_id for problem in problems]
    if len(set(ids)) != len(ids):
        duplicate = next(item for item in ids if ids.count(item) > 1)
        raise ProblemFileError(f"{path}: problem id {duplicate!r} appears more than once")
    return problems
