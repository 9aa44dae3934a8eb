"""``lens-pivotal patchscope decode|attribute`` through the real entry point, on a tiny model directory."""

from __future__ import annotations

import json

import pytest

from lens_pivotal.cli.main import main as run
from lens_pivotal.testing import tiny_qwen_dir


@pytest.mark.parametrize("command", ["decode", "attribute"])
def test_subcommands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["patchscope", command, "--help"])
    assert exit_info.value.code == 0
    assert "--model" in capsys.readouterr().out


def test_decode_writes_json_and_png(tiny_qwen3_model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\n\nThe opposite of hot is\nMonday, Tuesday,\n")
    code = run([
        "patchscope", "decode", "--model", str(tiny_qwen_dir("qwen3")), "--device", "cpu", "--prompts", str(prompts),
        "--layers", "0,2", "--baselines", "logit_lens", "--out", str(tmp_path / "out"),
    ])
    assert code == 0
    saved = json.loads((tmp_path / "out" / "decoding.json").read_text())
    assert saved["layers"] == [0, 2] and len(saved["prompts"]) == 3 and saved["precision_at_1"]["patchscope"][1] == 1.0
    assert (tmp_path / "out" / "decoding.png").stat().st_size > 0
    assert "P@1 patchscope" in capsys.readouterr().out


def test_attribute_lists_relations_and_runs(tiny_qwen3_model, tmp_path, capsys):
    assert run(["patchscope", "attribute", "--list"]) == 0
    assert "country_capital_city" in capsys.readouterr().out.split()
    code = run([
        "patchscope", "attribute", "--model", str(tiny_qwen_dir("qwen3")), "--device", "cpu", "--relation", "adj_antonym",
        "--source-layers", "1", "--target-layers", "0,1", "--max-samples", "2", "--max-new-tokens", "2", "--out", str(tmp_path),
    ])
    assert code == 0
    saved = json.loads((tmp_path / "attribute_adj_antonym.json").read_text())
    assert saved["target_prompt"] == "The opposite of x" and len(saved["accuracy"][0]) == 2
    assert run(["patchscope", "attribute", "--relation", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown relation" in capsys.readouterr().err
