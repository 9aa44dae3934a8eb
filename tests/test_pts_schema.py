"""PTS rows: v1/v2 round trips on the real Qwen3 rows, duplicate removal, and validation errors naming line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lens_pivotal.pts.schema import V2_RENAMES, PivotalToken, PtsFormatError, load_pts

FIXTURE = Path(__file__).parent / "fixtures" / "qwen3_0.6b_real_rows.jsonl"


def real_rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def to_v2(row: dict, position: int) -> dict:
    renamed = {({v: k for k, v in V2_RENAMES.items()}).get(name, name): value for name, value in row.items()}
    return {**renamed, "position": position, "schema_version": "2.0", "event_type": "pivotal_token"}


def test_real_rows_load_and_round_trip(tmp_path):
    data = load_pts(FIXTURE)
    assert len(data) == 3 and data.duplicates_dropped == 0
    for parsed, raw in zip(data, real_rows()):
        written = parsed.to_dict()
        assert written == {name: raw[name] for name in written}  # every v1 field, same values, same order
        assert list(written) == [name for name in raw if name != "_provenance"]
    again = load_pts(write_jsonl(tmp_path / "again.jsonl", [row.to_dict() for row in data]))
    assert again.rows == data.rows


def test_v2_rows_normalise_to_the_same_rows(tmp_path):
    v2 = [to_v2(row, position=10 + index) for index, row in enumerate(real_rows())]
    assert "context" in v2[0] and "pivot_context" not in v2[0]
    data = load_pts(write_jsonl(tmp_path / "v2.jsonl", v2))
    v1 = load_pts(FIXTURE)
    assert [row.position for row in data] == [10, 11, 12]
    assert [row.to_dict() | {"position": None} for row in data] == [row.to_dict() | {"position": None} for row in v1]


def test_exact_duplicates_are_dropped_ignoring_timestamp(tmp_path):
    rows = real_rows()
    copies = [row | {"timestamp": "2030-01-01T00:00:00"} for row in rows[:2]]
    near_copy = rows[2] | {"prob_after": 0.5, "prob_delta": -0.3}
    data = load_pts(write_jsonl(tmp_path / "dup.jsonl", rows + copies + [near_copy]))
    assert data.duplicates_dropped == 2
    assert len(data) == 4 and data.rows[:3] == load_pts(FIXTURE).rows


def test_group_key_pairs_dataset_and_item_then_falls_back_to_query():
    data = load_pts(FIXTURE)
    assert list(data.groups()) == [("openai/gsm8k", "1"), ("codelion/optillmbench", "3")]
    orphan = PivotalToken.from_dict(real_rows()[0] | {"dataset_item_id": ""})
    assert orphan.group_key == ("", orphan.query)


def broken(field: str, value) -> dict:
    row = dict(real_rows()[0])
    if value is KeyError:
        del row[field]
    else:
        row[field] = value
    return row


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (broken("pivot_token_id", KeyError), "field 'pivot_token_id' is missing"),
        (broken("pivot_token_id", "32"), "field 'pivot_token_id' must be a non-negative integer"),
        (broken("prob_before", "0.68"), "field 'prob_before' must be a number"),
        (broken("prob_after", 1.5), "field 'prob_after' must lie in"),
        (broken("query", ""), "field 'query' is empty"),
        (broken("pivot_context", 7), "field 'pivot_context' must be a string"),
        (broken("prob_delta", -0.5), "field 'prob_delta' is -0.5 but prob_after - prob_before"),
        (broken("is_positive", True), "field 'is_positive' is True but prob_delta is -0.68"),
        (broken("solution", "another text"), "field 'solution' must start with pivot_context + pivot_token"),
        (broken("solution", 3), "field 'solution' must be a string"),
        ('{"model_id": "x", ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_invalid_row_error_names_line_and_field(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [real_rows()[1], bad_row])
    with pytest.raises(PtsFormatError) as error:
        load_pts(path)
    assert str(error.value).startswith(f"{path}:2: ") and message in str(error.value)


def test_lenient_loading_skips_and_reports_invalid_rows(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [real_rows()[0], broken("query", ""), "not json", real_rows()[1]])
    with pytest.warns(UserWarning, match="skipped 2 invalid rows"):
        data = load_pts(path, strict=False)
    assert len(data) == 2
    assert [message.split(": ")[0] for message in data.skipped] == [f"{path}:2", f"{path}:3"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        load_pts(tmp_path / "nope.jsonl")


def test_a_row_keeps_its_whole_solution_through_a_round_trip(tmp_path):
    row = real_rows()[0]
    solution = row["pivot_context"] + row["pivot_token"] + " and the rest of the answer."
    path = write_jsonl(tmp_path / "rows.jsonl", [row | {"solution": solution}, real_rows()[1]])
    first, second = load_pts(path)
    assert first.solution == solution and second.solution is None
    assert first.to_dict()["solution"] == solution and "solution" not in second.to_dict()
