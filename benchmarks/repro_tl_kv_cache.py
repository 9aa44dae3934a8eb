"""Standalone reproduction for TransformerLens: with transformers >= 5.24 the bridge's attention ignores the KV cache.

No lens_pivotal imports and no network: a tiny random Llama and a word-level tokenizer are built in memory.

    python benchmarks/repro_tl_kv_cache.py            # exit status 1 when the cached paths are wrong

transformers 5.24 passes the decoder layers' cache as ``cache=`` (``past_key_values`` is deprecated); TransformerLens
4.3's ``AttentionBridge._update_kv_cache`` reads only ``past_key_values`` / ``layer_past``, so a cached forward returns
an empty cache and ``generate()`` (``use_past_kv_cache=True``, the default) attends only to the newest token.
"""

from __future__ import annotations

import sys
from importlib.metadata import version

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens.model_bridge import TransformerBridge
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = ["<pad>", "<eos>", *[f"w{i}" for i in range(254)]]


def tiny_llama() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tokenizer


def main() -> int:
    print(", ".join(f"{name} {version(name)}" for name in ("transformers", "transformer-lens", "torch")))
    hf_model, tokenizer = tiny_llama()
    bridge = TransformerBridge.boot_transformers("tiny-llama", hf_model=hf_model, tokenizer=tokenizer, device="cpu")
    ids = torch.randint(2, len(WORDS), (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = bridge(ids)
        _, cache = bridge(ids[:, :6], return_type="logits_and_cache")
        prefix_length = cache.get_seq_length() if cache is not None else None
        continued = bridge(ids[:, 6:], past_key_values=cache)
        cached = bridge.generate(ids, max_new_tokens=8, do_sample=False, verbose=False, return_type="tokens")
        uncached = bridge.generate(
            ids, max_new_tokens=8, do_sample=False, verbose=False, return_type="tokens", use_past_kv_cache=False
        )
    error = (continued - full[:, 6:]).abs().max().item()
    print(f"cache length after a 6-token prefix: {prefix_length} (expected 6)")
    print(f"max |cached - uncached| logit of the next 4 tokens: {error:.3g}")
    print(f"generate, use_past_kv_cache=True : {cached[0, 10:].tolist()}")
    print(f"generate, use_past_kv_cache=False: {uncached[0, 10:].tolist()}")
    broken = error > 1e-4 or not torch.equal(cached, uncached)
    print("BROKEN: cached paths disagree with uncached ones" if broken else "ok")
    return int(broken)


if __name__ == "__main__":
    sys.exit(main())
