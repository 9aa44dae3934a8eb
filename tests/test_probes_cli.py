"""``lens-pivotal probe train|score`` through the real entry point, on the tiny Qwen3 and synthetic PTS rows."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest

from lens_pivotal.cli.main import main as run
from lens_pivotal.pts.schema import write_rows
from lens_pivotal.testing import tiny_qwen_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_rows):
    folder = tmp_path_factory.mktemp("probe_cli")
    data = folder / "rows.jsonl"
    with data.open("w") as handle:
        write_rows(synthetic_rows, handle)
    model = str(tiny_qwen_dir("qwen3"))
    code = run(["probe", "train", "--data", str(data), "--model", model, "--device", "cpu", "--out", str(folder / "out"),
                "--n-bootstrap", "50", "--negatives-per-positive", "2"])
    return code, folder / "out", model


def test_train_writes_probes_metrics_plots_and_views(trained, capsys):
    code, out, _ = trained
    assert code == 0
    for name in ("probes/config.json", "probes/probes.safetensors", "metrics.json", "layer_metrics.png",
                 "projection_best_layer.png", "scores_best_layer.html", "scores_all_layers.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"]["pivotal"] == 16 and 32 <= metrics["examples"]["total"] <= 48  # 2 per positive at most
    assert metrics["examples"]["negatives"] == "matched" and metrics["examples"]["answer_index_ks"] <= 0.15
    assert metrics["layers"] == ["0", "1", "2"] and metrics["best_layer"] in metrics["layers"]


def test_transfer_prints_the_matrix_and_writes_it(tmp_path, synthetic_rows, capsys):
    for name, dataset_id in (("first", "synthetic"), ("second", "other")):
        with (tmp_path / f"{name}.jsonl").open("w") as handle:
            write_rows([dataclasses.replace(row, dataset_id=dataset_id) for row in synthetic_rows], handle)
    code = run(["probe", "transfer", "--data", str(tmp_path / "first.jsonl"), "--data", str(tmp_path / "second.jsonl"),
                "--model", str(tiny_qwen_dir("qwen3")), "--device", "cpu", "--out", str(tmp_path / "out"), "--n-bootstrap", "20"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert [(row["train"], row["evaluate"]) for row in results][:2] == [("first", "first"), ("first", "second")]
    assert len(results) == 9 and "best baseline AUROC" in capsys.readouterr().out


def test_score_prints_each_token_with_its_score(trained, capsys, tmp_path):
    _, out, _ = trained
    capsys.readouterr()
    assert run(["probe", "score", "--probes", str(out / "probes"), "--device", "cpu", "--threshold", "0",
                "--html", str(tmp_path / "s.html"), "So 3 + 4 = 7"]) == 0
    printed = capsys.readouterr().out
    assert "P(next token is pivotal), layer" in printed
    assert "' +'" in printed and printed.count("<- likely pivot next") == 9  # So, space, 3, +, space, 4, =, space, 7
    assert (tmp_path / "s.html").is_file()


def test_score_marks_at_a_false_positive_rate(trained, capsys):
    from lens_pivotal.probes.layer_probes import LayerProbes

    _, out, _ = trained
    capsys.readouterr()
    assert run(["probe", "score", "--probes", str(out / "probes"), "--device", "cpu", "--fpr", "0.25", "So 3 + 4 = 7"]) == 0
    printed = capsys.readouterr().out
    threshold = LayerProbes.load(out / "probes").threshold_at_fpr(0.25)
    assert f"marked at >= {threshold:.3f}" in printed
    scores = [float(match[1]) for match in re.finditer(r"^\s*\d+\s+'.*'\s+(\d\.\d{3})", printed, flags=re.MULTILINE)]
    assert len(scores) == 9
    assert printed.count("<- likely pivot next") == sum(score >= threshold for score in scores)


def test_errors_are_one_line(trained, capsys, tmp_path):
    assert run(["probe", "score", "--probes", str(tmp_path), "text"]) == 2
    assert "holds no config.json" in capsys.readouterr().err
    _, out, _ = trained
    assert run(["probe", "score", "--probes", str(out / "probes"), "--model", str(tiny_qwen_dir("qwen3", n_layers=2)),
                "--device", "cpu", "text"]) == 2
    assert "these probes were made from" in capsys.readouterr().err
    assert run(["probe", "train", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_transfer_refuses_two_datasets_with_one_name(tmp_path):
    with pytest.raises(SystemExit, match="--data names must differ in their last part"):
        run(["probe", "transfer", "--data", str(tmp_path / "a" / "rows.jsonl"), "--data", str(tmp_path / "b" / "rows.jsonl")])


def test_a_rerun_into_the_same_folder_is_refused_and_overwrite_replaces_every_file(trained, capsys, tmp_path):
    _, first, model = trained
    out = tmp_path / "out"
    shutil.copytree(first, out)
    (out / "left_from_an_older_run.txt").write_text("stale")
    before = (out / "probes" / "probes.safetensors").read_bytes()
    again = ["probe", "train", "--data", str(first.parent / "rows.jsonl"), "--model", model, "--device", "cpu",
             "--out", str(out), "--n-bootstrap", "50", "--seed", "1"]
    assert run(again) == 2 and "already exists" in capsys.readouterr().err
    assert (out / "probes" / "probes.safetensors").read_bytes() == before
    assert run([*again, "--overwrite"]) == 0
    assert not (out / "left_from_an_older_run.txt").exists()
    saved = json.loads((out / "probes" / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert saved["config"]["settings"]["seed"] == 1 and saved["results"]["cv_auroc"] == metrics["cv_auroc"]
