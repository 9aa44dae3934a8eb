"""``lens-pivotal pts show|search`` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lens_pivotal.cli.main import main as run
from lens_pivotal.pts.output import progress_path
from lens_pivotal.testing import tiny_qwen_dir

FIXTURE = Path(__file__).parent / "fixtures" / "qwen3_0.6b_real_rows.jsonl"


@pytest.mark.parametrize("command", ["search", "show", "export"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["pts", command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: lens-pivotal pts {command}" in capsys.readouterr().out


def test_show_summarises_rows_problems_signs_and_deltas(capsys):
    assert run(["pts", "show", str(FIXTURE), "--bins", "4"]) == 0
    out = capsys.readouterr().out
    assert "rows: 3 (0 exact duplicates dropped, 0 invalid rows skipped)" in out
    assert "problems: 2" in out and "positive (delta > 0): 1   negative: 2" in out
    histogram = [line.split() for line in out.splitlines() if line.startswith("  [")]
    assert [int(line[2]) for line in histogram] == [1, 1, 0, 1]  # -0.68 and -0.4 below 0, +0.5 in [0.5, 1]


def test_show_names_the_bad_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(FIXTURE.read_text().splitlines()[0] + "\n{}\n")
    assert run(["pts", "show", str(bad)]) == 2
    assert "bad.jsonl:2: field 'model_id' is missing" in capsys.readouterr().err


def test_search_runs_end_to_end_and_records_every_problem(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    argv = ["pts", "search", "--model", str(tiny_qwen_dir("qwen3")), "--device", "cpu", "--n-problems", "2",
            "--num-samples", "4", "--max-new-tokens", "3", "--out", str(out)]
    assert run(argv) == 0
    assert "new pivotal tokens from 2 problems" in capsys.readouterr().out
    records = [json.loads(line) for line in progress_path(out).read_text().splitlines()]
    assert records[0]["settings"]["search"]["num_samples"] == 4
    assert [record["dataset_item_id"] for record in records[1:]] == ["0", "1"]
    assert run(argv[:-2] + ["--operand-range", "3", "--out", str(tmp_path / "other.jsonl")]) == 2
    assert "operand-range" in capsys.readouterr().err


def test_export_writes_steering_records_and_dpo_pairs(tmp_path, synthetic_rows, capsys):
    from lens_pivotal.pts.schema import write_rows

    data = tmp_path / "rows.jsonl"
    with data.open("w") as handle:
        write_rows(synthetic_rows[:4], handle)
    model = ["--model", str(tiny_qwen_dir("qwen3")), "--device", "cpu"]
    assert run(["pts", "export", "--data", str(data), "--format", "steering", "--layer", "2", "--out", str(tmp_path / "s.jsonl"), *model]) == 0
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(records) == 4 and len(records[0]["vector"]) == 64 and records[0]["hook_name"] == "blocks.2.hook_resid_post"
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": "q", "answer": "12", "id": str(item)}) + "\n" for item in range(2)))
    code = run(["pts", "export", "--data", str(data), "--format", "dpo", "--out", str(tmp_path / "d.jsonl"), "--problems",
                str(problems), "--dataset-id", "synthetic", "--num-samples", "2", "--max-new-tokens", "2", *model])
    assert code == 0 and "rows without a measured counterpart left out" in capsys.readouterr().out
