"""load_model: local directories, wrapped HF models, architectures, and the errors a user gets."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, XLNetConfig

import lens_pivotal as lp
from lens_pivotal.model import resolve_dtype
from lens_pivotal.testing import tiny_llama_dir, tiny_qwen_dir


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_local_directory_gives_a_transformerlens_model_with_hf_logits(arch):
    directory = tiny_llama_dir() if arch == "llama" else tiny_qwen_dir(arch)
    model = lp.load_model(directory, device="cpu")
    reference = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    ids = model.to_tokens("Hello world, this is a test")
    with torch.no_grad():
        expected = torch.log_softmax(reference(ids).logits, dim=-1)
    logits, cache = model.run_with_cache(ids, names_filter="blocks.0.hook_resid_post")
    # compatibility mode centres the unembedding, so logits match up to a constant per position
    torch.testing.assert_close(torch.log_softmax(logits, dim=-1), expected, atol=1e-4, rtol=0)
    assert cache["blocks.0.hook_resid_post"].shape == (1, ids.shape[1], model.cfg.d_model)
    assert model.compatibility_mode and not model.training


def test_wraps_an_already_loaded_hf_model():
    directory = tiny_qwen_dir("qwen3")
    hf_model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = lp.load_model("my-tiny-qwen", hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype="bfloat16")
    assert model.cfg.model_name == "my-tiny-qwen"
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.to_tokens("The capital of France is")[0].tolist() == [785, 6722, 315, 9625, 374]


def test_a_device_map_loads_through_transformerlens_and_computes_hf_logits():
    directory = tiny_qwen_dir("qwen3")
    model = lp.load_model(directory, device_map="auto")  # no GPU here: everything stays on the CPU
    reference = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    ids = model.to_tokens("Hello world, this is a test")
    with torch.no_grad():
        expected = torch.log_softmax(reference(ids).logits, dim=-1)
        torch.testing.assert_close(torch.log_softmax(model(ids), dim=-1), expected, atol=1e-4, rtol=0)
    assert model.compatibility_mode
    with pytest.raises(ValueError, match="without device= and without hf_model="):
        lp.load_model(directory, device="cpu", device_map="auto")


def test_compat_false_keeps_raw_weights():
    model = lp.load_model(tiny_qwen_dir("qwen3"), device="cpu", compat=False)
    assert not getattr(model, "compatibility_mode", False)


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lp.load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        lp.load_model(tmp_path)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    config = XLNetConfig(vocab_size=32, d_model=16, n_layer=1, n_head=2, d_inner=32, architectures=["XLNetLMHeadModel"])
    config.save_pretrained(tmp_path)
    with pytest.raises(lp.UnsupportedArchitectureError, match="XLNetLMHeadModel.*not supported by TransformerLens"):
        lp.load_model(tmp_path)


@pytest.mark.parametrize(("given", "expected"), [(None, torch.float32), ("bf16", torch.bfloat16), (torch.float16, torch.float16)])
def test_dtype_spellings(given, expected):
    assert resolve_dtype(given) is expected


def test_bad_dtype_names_the_argument():
    with pytest.raises(ValueError, match="dtype='int9'"):
        resolve_dtype("int9")
