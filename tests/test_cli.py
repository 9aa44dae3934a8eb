"""The lens-pivotal command line: help on every subcommand, demo, cache, and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lens_pivotal.cli.main import build_parser, main
from lens_pivotal.resid.store import ResidStore
from lens_pivotal.testing import tiny_qwen_dir


def subcommands(parser) -> list[list[str]]:
    """Every path of subcommand names, e.g. [["demo"], ["cache"]]."""
    paths = []
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            paths.append([name])
            if sub._subparsers is not None:
                paths += [[name, *rest] for rest in subcommands(sub)]
    return paths


def test_the_module_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "lens_pivotal", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: lens-pivotal" in result.stdout


@pytest.mark.parametrize("path", [[]] + subcommands(build_parser()), ids=lambda p: " ".join(p) or "top")
def test_help_of_every_subcommand(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    assert f"usage: lens-pivotal {' '.join(path)}".rstrip() in capsys.readouterr().out


@pytest.mark.parametrize("command", [["demo"], ["attribute", "some text"]])
def test_integrated_gradients_steps_below_one_are_refused_before_any_work(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--steps", "0", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "argument --steps: must be a whole number of at least 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cache_writes_a_store_from_jsonl(tmp_path, capsys):
    data = tmp_path / "texts.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in [{"text": "Hello there", "positions": [0, -1]}, {"text": "Bye"}]))
    code = main(["cache", str(data), "--model", str(tiny_qwen_dir("qwen3")), "--out", str(tmp_path / "s"), "--layers", "0,2"])
    assert code == 0
    store = ResidStore.open(tmp_path / "s")
    assert store.complete and len(store) == 3 and store.hook_names == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert "ResidStore" in capsys.readouterr().out


def test_cache_reads_txt_with_default_positions(tmp_path):
    data = tmp_path / "texts.txt"
    data.write_text("first text\n\nsecond text here\n")
    assert main(["cache", str(data), "--model", str(tiny_qwen_dir("qwen3")), "--out", str(tmp_path / "s"), "--positions", "0,-1"]) == 0
    assert len(ResidStore.open(tmp_path / "s")) == 4


def test_cache_names_the_bad_line(tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(SystemExit, match=r"texts.jsonl:2: not valid JSON"):
        main(["cache", str(data), "--model", str(tiny_qwen_dir("qwen3")), "--out", str(tmp_path / "s")])
    data.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(SystemExit, match=r"texts.jsonl:2 has no string field 'text'"):
        main(["cache", str(data), "--model", str(tiny_qwen_dir("qwen3")), "--out", str(tmp_path / "s")])


def test_cache_reports_a_position_error_without_a_traceback(tmp_path, capsys):
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "Hi", "positions": [50]}\n')
    code = main(["cache", str(data), "--model", str(tiny_qwen_dir("qwen3")), "--out", str(tmp_path / "s")])
    assert code == 2
    assert "position 50 is out of range for text 0" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_demo_prints_a_logit_lens_table_and_trains_probes(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lens_pivotal", "demo", "--out", str(tmp_path / "demo"), "--steps", "8"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "The capital of France is" in result.stdout
    last_row = [line for line in result.stdout.splitlines() if line.strip().startswith("29 ")][0]
    assert "' Paris'" in last_row
    records = json.loads((tmp_path / "demo" / "logit_lens.json").read_text())
    assert len(records) == 30 * 4
    assert "ProbeExamples(254 examples: 127 pivotal" in result.stdout and "answer-index KS 0.00" in result.stdout
    assert result.stdout.count("<- best (CV)") == 3  # pivotal probes, direction probes, prob_delta regression
    metrics = json.loads((tmp_path / "demo" / "probes" / "metrics.json").read_text())
    assert len(metrics["layers"]) == 30 and max(metrics["metrics"]["auroc"]["value"]) > 0.6
    assert metrics["examples"]["answer_index_ks"] == 0 and {"direction", "prob_delta_regression"} <= set(metrics)
    assert "(probe+entropy+top1_prob) - (entropy+top1_prob) [95% CI]" in result.stdout and len(metrics["cv_auroc"]) == 30
    assert "FPR 0.1" in result.stdout and "precision (texts)" in result.stdout
    assert (tmp_path / "demo" / "probes" / "probes" / "probes.safetensors").is_file()
    assert "integrated gradients, 8 steps" in result.stdout and (tmp_path / "demo" / "why_pivotal.html").is_file()
    assert f"wrote {tmp_path / 'demo' / 'why_pivotal.html'}" in result.stdout  # the final folder, not the scratch one


def test_a_device_map_for_the_embedded_model_is_a_clear_error(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("Hello\n")
    assert main(["cache", str(texts), "--out", str(tmp_path / "s"), "--device-map", "auto"]) == 2
    assert "--device-map is for hub or local models" in capsys.readouterr().err
