"""``lens-pivotal steer eval`` through the real entry point, on the tiny Qwen3 and synthetic PTS rows."""

from __future__ import annotations

import json

import pytest

from lens_pivotal.cli.main import main as run
from lens_pivotal.pts.schema import write_rows
from lens_pivotal.steering import SteeringVectors
from lens_pivotal.testing import tiny_qwen_dir


def test_eval_writes_report_plot_and_vectors_on_held_out_problems(tmp_path, synthetic_rows, capsys):
    data = tmp_path / "rows.jsonl"
    with data.open("w") as handle:
        write_rows(synthetic_rows, handle)
    out = tmp_path / "out"
    code = run(["steer", "eval", "--data", str(data), "--model", str(tiny_qwen_dir("qwen3")), "--device", "cpu",
                "--layer", "1", "--alphas", "1,4", "--n-problems", "11", "--dataset-id", "synthetic", "--samples", "2",
                "--max-new-tokens", "4", "--n-bootstrap", "20", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    names = [result["name"] for result in report["results"]]
    assert names == ["none", "steered a=1", "steered a=4", "random: steered a=1", "random: steered a=4"]
    assert report["block"] == 1 and len(report["problems"]) == 3
    assert not set(report["problems"]) & {f"synthetic#{item}" for item in range(8)}  # never a problem the vector saw
    assert (out / "success_vs_alpha.png").stat().st_size > 5_000
    assert SteeringVectors.load(out / "vectors").config.hook_names == ["blocks.1.hook_resid_post"]
    assert "steered a=4" in capsys.readouterr().out


def test_bad_arguments_are_named(tmp_path, synthetic_rows):
    with pytest.raises(SystemExit, match="--alphas must be comma-separated numbers"):
        run(["steer", "eval", "--alphas", "1,x"])
    data = tmp_path / "rows.jsonl"
    with data.open("w") as handle:
        write_rows(synthetic_rows, handle)
    with pytest.raises(SystemExit, match="every problem was used to build the vector"):
        run(["steer", "eval", "--data", str(data), "--model", str(tiny_qwen_dir("qwen3")), "--device", "cpu",
             "--n-problems", "3", "--dataset-id", "synthetic", "--out", str(tmp_path / "o")])
