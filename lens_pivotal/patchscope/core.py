"""A patchscope (source prompt, layer, position, model → f → target prompt, layer, position, model) and
the batched target passes every PatchScope experiment is built from.

Both ends are ``blocks.{l}.hook_resid_post``. The target pass reuses the KV cache of the target prompt's
prefix (the tokens before the patched position, identical for every row): it is computed once and only
the tokens from the patched position on are run for each row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal.indices import resolve_index
from lens_pivotal.kv_cache import repeated_cache
from lens_pivotal.model import resid_post_hook
from lens_pivotal.patchscope.hooks import Mapping, layered_patch_hooks, patch_hook
from lens_pivotal.resid.cache import cache_resid_post
from lens_pivotal.tokens import Tokenization, token_ids

IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"


def check_layer(model: TransformerBridge, layer: int, what: str) -> int:
    """``layer`` as a non-negative block index (negatives count from the end), or a clear IndexError."""
    n_layers = model.cfg.n_layers
    return resolve_index(layer, n_layers, f"{what}={layer!r}", f": the model has {n_layers} blocks (0..{n_layers - 1})")


def check_position(position: int, length: int, what: str) -> int:
    """``position`` as a non-negative index into ``length`` tokens, or a clear IndexError."""
    return resolve_index(position, length, f"{what}={position!r}", f" for a prompt of {length} tokens")


@dataclass
class TargetPrompt:
    """A target prompt tokenized once, with the KV cache of everything before the patched position."""

    tokens: Int[Tensor, " seq"]
    position: int
    prefix_cache: Any | None

    @classmethod
    def from_model(
        cls, model: TransformerBridge, prompt: str, position: int = -1, *, tokenization: Tokenization = "tokenizer"
    ) -> TargetPrompt:
        """Tokenize ``prompt`` (:mod:`lens_pivotal.tokens`) and run the prefix before ``position`` once."""
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"target prompt must be a non-empty string, got {prompt!r}")
        tokens = token_ids(model, prompt, tokenization=tokenization, what="target prompt")
        position = check_position(position, len(tokens), "target_position")
        cache = None
        if position > 0:
            with torch.inference_mode():
                _, cache = model(tokens[None, :position], return_type="logits_and_cache")
        return cls(tokens, position, cache)

    def suffix(self, n_rows: int) -> Int[Tensor, "rows suffix"]:
        """The tokens from the patched position on, repeated for ``n_rows`` rows."""
        return self.tokens[self.position :].expand(n_rows, -1)

    def cache_for(self, n_rows: int) -> Any | None:
        """A fresh copy of the prefix cache expanded to ``n_rows`` (the forward pass extends it in place)."""
        if self.prefix_cache is None:
            return None
        return repeated_cache(self.prefix_cache, n_rows)


def patched_logits(
    model: TransformerBridge,
    target: TargetPrompt,
    vectors: Float[Tensor, "rows d_model"],
    layers: Sequence[int],
    *,
    mapping: Mapping | None = None,
) -> Float[Tensor, "rows d_vocab"]:
    """Next-token logits at the target's last token, row ``r`` patched with ``vectors[r]`` at ``layers[r]``."""
    ids = target.suffix(len(vectors))
    vectors = vectors.to(ids.device)
    hooks = layered_patch_hooks(
        vectors, 0, layers, mapping=mapping, attention_mask=torch.ones_like(ids)
    )
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        logits = model(ids, past_key_values=target.cache_for(len(vectors)))
    return logits[:, -1]


def patched_generate(
    model: TransformerBridge,
    target: TargetPrompt,
    vectors: Float[Tensor, "rows d_model"],
    layers: Sequence[int],
    *,
    max_new_tokens: int,
    mapping: Mapping | None = None,
) -> list[str]:
    """Greedy continuations of the target prompt, row ``r`` patched with ``vectors[r]`` at ``layers[r]``
    in the prompt pass only (decode steps are left alone)."""
    ids = target.tokens.expand(len(vectors), -1)
    vectors = vectors.to(ids.device)
    hooks = layered_patch_hooks(
        vectors, target.position, layers, mapping=mapping, attention_mask=torch.ones_like(ids)
    )
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, verbose=False, return_type="tokens")
    return decode_continuations(model, out[:, ids.shape[1] :])


def decode_continuations(model: TransformerBridge, new_tokens: Int[Tensor, "rows new"]) -> list[str]:
    """Decoded generated tokens, one string per row, cut at the first end-of-sequence token."""
    eos = model.tokenizer.eos_token_id
    texts = []
    for row in new_tokens.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(model.tokenizer.decode(row))
    return texts


@dataclass
class PatchscopeResult:
    """What the patched target predicts next, and optionally its greedy continuation."""

    logits: Float[Tensor, " d_vocab"]
    top_tokens: list[tuple[str, float]]
    generation: str | None

    @property
    def probs(self) -> Float[Tensor, " d_vocab"]:
        """The patched next-token distribution."""
        return torch.softmax(self.logits.float(), dim=-1)


@dataclass
class Patchscope:
    """One patchscope. The source model is the one passed to :meth:`inspect`.

    Attributes:
        source_prompt: text whose hidden state is read.
        source_layer: block whose ``hook_resid_post`` is read (negatives count from the end).
        target_prompt: text the state is written into (default: the identity prompt).
        target_layer: block whose ``hook_resid_post`` is overwritten; ``None`` means ``source_layer``.
        source_position / target_position: token indices (negatives count from the end).
        mapping: ``f`` applied to the source state (``None``: identity); required when the models differ
            in ``d_model``.
        target_model: the model that runs the target prompt; ``None`` means the source model.
        max_new_tokens: length of the greedy continuation (0: next-token distribution only).
        tokenization: how both prompts are tokenized (:mod:`lens_pivotal.tokens`).
    """

    source_prompt: str
    source_layer: int
    target_prompt: str = IDENTITY_PROMPT
    target_layer: int | None = None
    source_position: int = -1
    target_position: int = -1
    mapping: Mapping | None = None
    target_model: TransformerBridge | None = None
    max_new_tokens: int = 0
    tokenization: Tokenization = "tokenizer"

    def inspect(self, model: TransformerBridge, *, top_k: int = 10) -> PatchscopeResult:
        """Run the patchscope: one source pass, one patched target pass (plus generation if asked)."""
        target_model = self.target_model or model
        source_layer = check_layer(model, self.source_layer, "source_layer")
        target_layer = check_layer(target_model, source_layer if self.target_layer is None else self.target_layer, "target_layer")
        vector = cache_resid_post(
            model, [self.source_prompt], [self.source_position], layers=[source_layer], tokenization=self.tokenization,
            progress=False,
        )[0, 0]
        tokens = token_ids(target_model, self.target_prompt, tokenization=self.tokenization, what="target_prompt")[None]
        target_position = check_position(self.target_position, tokens.shape[1], "target_position")
        hook = patch_hook(vector, target_position, mapping=self.mapping, attention_mask=torch.ones_like(tokens))
        with torch.inference_mode(), target_model.hooks(fwd_hooks=[(resid_post_hook(target_layer), hook)]):
            logits = target_model(tokens)[0, -1]
        generation = None
        if self.max_new_tokens > 0:
            target = TargetPrompt(tokens[0], target_position, None)
            generation = patched_generate(
                target_model, target, vector[None], [target_layer], max_new_tokens=self.max_new_tokens, mapping=self.mapping
            )[0]
        probs = torch.softmax(logits.float(), dim=-1)
        top = probs.topk(min(top_k, probs.shape[-1]))
        names = [target_model.tokenizer.decode([index]) for index in top.indices.tolist()]
        return PatchscopeResult(logits.float().cpu(), list(zip(names, top.values.tolist())), generation)

