"""Pivotal Token Search rows: one normalised row type, v1/v2 parsing and validation, and :func:`load_pts`.

The row follows the PTS v1 JSONL schema of codelion/pts (``pivot_context``, ``pivot_token``, ``pivot_token_id``,
...) plus v2's ``position``. v2 rows (``context``, ``label``, ``token_id``, ``schema_version``, ``event_type``)
are read into the same type.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from lens_pivotal._io import JsonLine, jsonl_lines
from lens_pivotal.pts.dataset import SHIPPED_DATASETS, shipped_pts_path

V2_RENAMES = {"context": "pivot_context", "label": "pivot_token", "token_id": "pivot_token_id"}
TEXT_FIELDS = ("model_id", "query", "pivot_context", "pivot_token")
LABEL_FIELDS = ("task_type", "dataset_id")
PROB_FIELDS = ("prob_before", "prob_after", "prob_delta")
DELTA_TOLERANCE = 1e-6


class PtsFormatError(ValueError):
    """A PTS row is invalid; the message names the row (file line or dataset row) and the field."""


@dataclass(frozen=True)
class PivotalToken:
    """One pivotal token: including ``pivot_token`` after ``pivot_context`` moves P(success) from before to after.

    ``pivot_context`` is the decoded prompt plus every generated token before the pivot, so the residual stream at
    its last token is the one whose next-token prediction is the pivot. ``position`` (v2) is the pivot's absolute
    token index in the prompt + solution sequence, ``None`` when the source did not record it. ``solution`` (our
    extension, optional) is the whole sampled solution the pivot was found on, decoded as ``pivot_context`` is
    (prompt included): ``pivot_context + pivot_token`` is its prefix, and the search graded every token of it, so
    the states after the last pivot are known not to be pivotal too. ``None`` where the source did not keep it.
    """

    model_id: str
    query: str
    pivot_context: str
    pivot_token: str
    pivot_token_id: int
    prob_before: float
    prob_after: float
    task_type: str
    dataset_id: str
    dataset_item_id: str
    timestamp: str = ""
    position: int | None = None
    solution: str | None = None

    @property
    def prob_delta(self) -> float:
        """``prob_after - prob_before``."""
        return self.prob_after - self.prob_before

    @property
    def is_positive(self) -> bool:
        """The token makes success more likely."""
        return self.prob_delta > 0

    @property
    def group_key(self) -> tuple[str, str]:
        """The problem this row belongs to: ``(dataset_id, dataset_item_id)``, or ``("", query)`` without an item id.

        ``dataset_item_id`` alone collides across datasets in the public PTS sets, hence the pair.
        """
        return (self.dataset_id, self.dataset_item_id) if self.dataset_item_id else ("", self.query)

    def to_dict(self) -> dict[str, Any]:
        """The row as a PTS v1 JSON object, plus ``position`` and ``solution`` when known."""
        row = asdict(self)
        row.update(prob_delta=self.prob_delta, is_positive=self.is_positive)
        ordered = {name: row[name] for name in V1_FIELD_ORDER}
        return ordered | {name: row[name] for name in OPTIONAL_FIELDS if row[name] is not None}

    def dedup_key(self) -> str:
        """Identity of the row ignoring ``timestamp``: equal keys are exact duplicates."""
        row = self.to_dict()
        row.pop("timestamp")
        return json.dumps(row, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Any, where: str = "row") -> PivotalToken:
        """Parse and validate a v1 or v2 row; ``where`` (e.g. ``"file.jsonl:12"``) prefixes every error.

        Raises:
            PtsFormatError: not an object, a missing field, a wrong type, empty text, a probability outside
                [0, 1], or ``prob_delta``/``is_positive`` inconsistent with the probabilities.
        """
        if not isinstance(raw, dict):
            raise PtsFormatError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        row = {V2_RENAMES.get(name, name): value for name, value in raw.items()}
        check = _FieldChecker(row, where)
        for name in TEXT_FIELDS:
            check.text(name)
        for name in LABEL_FIELDS:
            check.string(name)
        for name in PROB_FIELDS:
            check.probability(name, signed=name == "prob_delta")
        parsed = cls(
            **{name: row[name] for name in (*TEXT_FIELDS, *LABEL_FIELDS, "prob_before", "prob_after")},
            pivot_token_id=check.integer("pivot_token_id"),
            dataset_item_id=check.item_id("dataset_item_id"),
            timestamp=check.timestamp("timestamp"),
            position=check.integer("position") if row.get("position") is not None else None,
            solution=check.solution(row.get("pivot_context", "") + row.get("pivot_token", "")),
        )
        check.consistent(parsed)
        return parsed


V1_FIELD_ORDER = (
    "model_id", "query", "pivot_context", "pivot_token", "pivot_token_id", "prob_before", "prob_after",
    "prob_delta", "is_positive", "task_type", "dataset_id", "dataset_item_id", "timestamp",
)
OPTIONAL_FIELDS = ("position", "solution")


@dataclass
class _FieldChecker:
    """Validates one row's fields, raising errors that name the row and field."""

    row: dict[str, Any]
    where: str

    def _fail(self, name: str, problem: str) -> PtsFormatError:
        return PtsFormatError(f"{self.where}: field {name!r} {problem}")

    def _get(self, name: str) -> Any:
        if name not in self.row or self.row[name] is None:
            raise self._fail(name, "is missing")
        return self.row[name]

    def string(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise self._fail(name, f"must be a string, got {type(value).__name__} {value!r}")
        return value

    def text(self, name: str) -> str:
        value = self.string(name)
        if not value:
            raise self._fail(name, "is empty")
        return value

    def integer(self, name: str) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._fail(name, f"must be a non-negative integer, got {value!r}")
        return value

    def item_id(self, name: str) -> str:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self._fail(name, f"must be a string, got {type(value).__name__} {value!r}")
        return str(value)

    def probability(self, name: str, signed: bool) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._fail(name, f"must be a number, got {value!r}")
        low = -1.0 if signed else 0.0
        if not low <= value <= 1.0:
            raise self._fail(name, f"must lie in [{low:g}, 1], got {value!r}")
        return float(value)

    def timestamp(self, name: str) -> str:
        value = self.row.get(name) or ""
        if isinstance(value, (datetime.datetime, datetime.date)):
            return value.isoformat()
        if not isinstance(value, str):
            raise self._fail(name, f"must be an ISO date string, got {type(value).__name__} {value!r}")
        return value

    def solution(self, pivot_text: str) -> str | None:
        """The optional ``solution``: a string that starts with ``pivot_context + pivot_token``."""
        if self.row.get("solution") is None:
            return None
        value = self.string("solution")
        if not value.startswith(pivot_text):
            raise self._fail("solution", "must start with pivot_context + pivot_token")
        return value

    def consistent(self, parsed: PivotalToken) -> None:
        stored = self.row["prob_delta"]
        if abs(stored - parsed.prob_delta) > DELTA_TOLERANCE:
            raise self._fail(
                "prob_delta", f"is {stored!r} but prob_after - prob_before = {parsed.prob_delta!r}"
            )
        is_positive = self._get("is_positive")
        if not isinstance(is_positive, bool):
            raise self._fail("is_positive", f"must be true or false, got {is_positive!r}")
        if is_positive != (stored > 0):
            raise self._fail("is_positive", f"is {is_positive} but prob_delta is {stored!r}")


@dataclass
class PtsData:
    """Rows of a PTS dataset after validation and de-duplication, with what was dropped and why."""

    rows: list[PivotalToken]
    source: str
    duplicates_dropped: int = 0
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PivotalToken]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> PivotalToken:
        return self.rows[index]

    def groups(self) -> dict[tuple[str, str], list[PivotalToken]]:
        """Rows per problem (see :attr:`PivotalToken.group_key`), in first-seen order."""
        grouped: dict[tuple[str, str], list[PivotalToken]] = {}
        for row in self.rows:
            grouped.setdefault(row.group_key, []).append(row)
        return grouped

    def __repr__(self) -> str:
        return (
            f"PtsData({len(self.rows)} rows from {len(self.groups())} problems of {self.source!r}; "
            f"{self.duplicates_dropped} duplicates dropped, {len(self.skipped)} invalid rows skipped)"
        )


def _file_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed JSON or the line's :class:`~lens_pivotal._io.JsonLine` when it is not JSON) per non-blank line."""
    for line in jsonl_lines(path):
        yield line.where, line if line.error is not None else line.value


def _dataset_records(source: str, rows: Iterable[dict[str, Any]]) -> Iterator[tuple[str, Any]]:
    for index, row in enumerate(rows):
        yield f"{source} row {index}", row


def _records(source: str | os.PathLike, split: str) -> Iterator[tuple[str, Any]]:
    path = shipped_pts_path(str(source)) if str(source) in SHIPPED_DATASETS else Path(source)
    if path.suffix in (".jsonl", ".json") or path.is_file() and path.suffix != ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"PTS file {path} does not exist")
        return _file_records(path)
    from datasets import load_dataset

    if path.suffix == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"PTS file {path} does not exist")
        return _dataset_records(str(path), load_dataset("parquet", data_files=str(path), split="train"))
    return _dataset_records(str(source), load_dataset(str(source), split=split))


def load_pts(source: str | os.PathLike, *, strict: bool = True, split: str = "train") -> PtsData:
    """Load PTS rows from a shipped dataset's name (``"lens_pivotal/arithmetic"``, ``"lens_pivotal/multistep_arithmetic"``),
    a local JSONL or parquet file, or a hub dataset id (e.g. ``"codelion/Qwen3-0.6B-pts"``).

    v1 and v2 rows are normalised to :class:`PivotalToken`. Exact duplicates (every field equal but the
    timestamp; the public v1 sets stored each token twice) are dropped and counted in ``duplicates_dropped``.

    Args:
        source: a name in :data:`~lens_pivotal.pts.dataset.SHIPPED_DATASETS`, a ``.jsonl``/``.parquet`` path, or a
            hub id loaded with ``datasets.load_dataset`` (network).
        strict: raise on the first invalid row; with ``False`` invalid rows are skipped, listed in ``skipped``
            and summarised in a warning.
        split: the split of a hub dataset.

    Raises:
        PtsFormatError: (strict) a line that is not JSON, or an invalid row; the message names line/row and field.
        FileNotFoundError: a local path that does not exist.
    """
    rows, seen, skipped, duplicates = [], set(), [], 0
    for where, record in _records(source, split):
        try:
            if isinstance(record, JsonLine):
                raise PtsFormatError(record.describe_error())
            row = PivotalToken.from_dict(record, where)
        except PtsFormatError as error:
            if strict:
                raise
            skipped.append(str(error))
            continue
        key = row.dedup_key()
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        rows.append(row)
    if skipped:
        warnings.warn(f"{source}: skipped {len(skipped)} invalid rows; first: {skipped[0]}", stacklevel=2)
    return PtsData(rows, str(source), duplicates, skipped)


def load_shipped_pts(name: str = "lens_pivotal/arithmetic") -> PtsData:
    """A shipped dataset by name, validated (see ``lens_pivotal/data/pts/README.md`` for how each was made)."""
    return load_pts(shipped_pts_path(name))

def write_rows(rows: Iterable[PivotalToken], handle: Any) -> int:
    """Append rows to an open text file as JSONL; returns how many were written."""
    count = 0
    for row in rows:
        handle.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
        count += 1
    return count
