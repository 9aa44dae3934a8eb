"""``lens-pivotal attribute`` through the real entry point, on the tiny Qwen3."""

from __future__ import annotations

import json
import re

import pytest

from lens_pivotal.cli.main import main as run
from lens_pivotal.pts.schema import write_rows
from lens_pivotal.testing import tiny_qwen_dir

from test_attributions_token_attribution import random_probes


@pytest.fixture(scope="module")
def model_dir():
    return str(tiny_qwen_dir("qwen3"))


def test_attribute_a_token_writes_the_view_json_and_heads(model_dir, tmp_path, capsys):
    out = tmp_path / "view.html"
    code = run(["attribute", "Sam has 12 apples", "--target-id", "11", "--model", model_dir, "--device", "cpu",
                "--steps", "4", "--heads", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file() and (tmp_path / "view_heads.html").is_file()
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["method"] == "integrated_gradients" and saved["steps"] == 4 and len(saved["scores"]) == len(saved["tokens"])
    assert saved["baseline"] == "pad" and saved["kept_positions"] == [0]
    change = saved["target_value"] - saved["baseline_value"]
    gap = abs(sum(saved["scores"]) - change) / abs(change)
    assert re.search(rf"'pad' baseline .*; convergence delta .*completeness gap {gap:.1%}", printed)
    assert "top heads" in printed


def test_attribute_a_probe_and_the_pivot_page(model_dir, tmp_path, capsys, tiny_qwen3_model, synthetic_rows):
    probes_dir = random_probes(tiny_qwen3_model).save(tmp_path / "probes")
    assert run(["attribute", "Sam has 12 apples", "--probes", str(probes_dir), "--layer", "1", "--model", model_dir,
                "--device", "cpu", "--method", "occlusion", "--out", str(tmp_path / "probe.html")]) == 0
    assert "probe logit, block 1" in capsys.readouterr().out
    data = tmp_path / "rows.jsonl"
    with data.open("w") as handle:
        write_rows(synthetic_rows, handle)
    assert run(["attribute", "--pts", str(data), "--probes", str(probes_dir), "--layer", "2", "--n", "2", "--model", model_dir,
                "--device", "cpu", "--steps", "2", "--out", str(tmp_path / "pivots.html")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("prob_delta") == 2 and printed.count("completeness gap") == 4  # each row's probe and pivot
    assert (tmp_path / "pivots.html").is_file()


def test_errors_are_one_line(model_dir, tmp_path, capsys):
    common = ["--model", model_dir, "--device", "cpu", "--out", str(tmp_path / "x.html")]
    assert run(["attribute", "Sam has 12 apples", "--target", " apples and", *common]) == 2
    assert "is 2 tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--pts needs --probes"):
        run(["attribute", "--pts", "rows.jsonl", *common])
    with pytest.raises(SystemExit, match="give either TEXT or --pts"):
        run(["attribute", *common])
    with pytest.raises(SystemExit, match="--baseline must be 'pad', 'zero' or a token id, got 'mean'"):
        run(["attribute", "Sam has 12 apples", "--baseline", "mean", *common])
    assert not (tmp_path / "x.html").exists()
