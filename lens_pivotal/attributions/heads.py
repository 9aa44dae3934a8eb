"""Which heads write a linear target, from which source tokens: the direct-effect decomposition of the residual stream.

The residual stream at the read point is the embedding plus every block's attention and MLP output. Projected on the
target's direction (a probe's, or a token's unembedding column through the final normalisation frozen at its value
on this input, as TransformerLens' ``ActivationCache.apply_ln_to_stack`` does), these parts sum to the target. Each
head's part is split further by source token: attention pattern × value × ``W_O``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.attributions.results import HeadAttribution
from lens_pivotal.attributions.targets import Target, TargetSpec, resolve_target
from lens_pivotal.indices import resolve_index
from lens_pivotal.model import Layer
from lens_pivotal.tokens import TextOrIds, Tokenization, token_ids

CONSISTENCY_TOLERANCE = 1e-3  # relative: per-source parts must add up to TransformerLens' own head results


def head_attributions(
    model: Any,
    text: TextOrIds,
    *,
    target: TargetSpec,
    position: int = -1,
    layer: Layer | None = None,
    keep_patterns: int = 8,
    tokenization: Tokenization = "tokenizer",
    add_special_tokens: bool | None = None,
) -> HeadAttribution:
    """Decompose a linear ``target`` at ``position`` into the embedding, every head by source token, and every MLP.

    Args:
        model: a TransformerLens model (:func:`lens_pivotal.load_model`).
        text: a string (the package's tokenization rule) or token ids.
        target: a token (its logit, through the final norm or, with ``layer``, the logit lens at that block; ``None``
            for the top-1 token; in compatibility mode the unembedding is centred over the vocabulary, so this logit
            is Hugging Face's minus the mean logit at that position: differences between tokens are unchanged), a :class:`~lens_pivotal.LayerProbes` (its logit at probed layer ``layer``), or
            ``(hook_name, direction)`` at a ``hook_resid_pre``, ``hook_resid_mid`` or ``hook_resid_post`` hook.
        position: the token position the target is read at; negatives count from the end.
        layer: as in :func:`lens_pivotal.attributions.attribute_tokens`.
        keep_patterns: how many of the strongest heads keep their whole attention pattern (for the view).

    Raises:
        ValueError: a target that is not linear in the residual stream (another hook), or a bad target.
        IndexError: ``position`` outside the text.
        RuntimeError: the parts do not add up to the target (beyond float rounding): the installed TransformerLens
            decomposes the stream differently than lens_pivotal expects.
    """
    ids = token_ids(model, text, tokenization=tokenization, add_special_tokens=add_special_tokens)
    position = resolve_index(position, len(ids), f"position {position!r}", f": the text has {len(ids)} tokens")
    ids = ids[: position + 1]
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids.unsqueeze(0))
        target_obj = resolve_target(model, target, layer, lambda: int(logits[0, -1].argmax()))
        reading = _Reading.of(model, target_obj, cache, logits)
        parts = _Decomposition(model, cache, reading)
        heads, mlp, bias, embedding = parts.per_source_heads(), parts.mlps(), parts.attention_bias(), parts.embedding()
        _check_consistency(heads.sum(dim=-1), parts.head_totals())
    patterns = torch.stack(
        [cache[f"blocks.{block}.attn.hook_pattern"][0, :, -1] for block in range(reading.attention_blocks)]
    )
    result = HeadAttribution(
        tokens=[model.tokenizer.decode([token]) for token in ids.tolist()], token_ids=ids.tolist(), position=position,
        target_label=reading.label, target_value=reading.value, heads=heads, attention_bias=bias, mlp=mlp,
        embedding=embedding, constant=reading.constant, patterns=patterns.float().cpu(),
        top_patterns=torch.empty(0, position + 1, position + 1), top_pattern_heads=[],
    )  # fmt: skip
    _check_complete(result)
    result.top_pattern_heads = [(block, head) for block, head, _ in result.top_heads(keep_patterns)]
    if result.top_pattern_heads:
        result.top_patterns = torch.stack(
            [cache[f"blocks.{block}.attn.hook_pattern"][0, head].float().cpu() for block, head in result.top_pattern_heads]
        )
    return result


@dataclass
class _Reading:
    """Where and how a linear target reads the residual stream: after ``blocks`` blocks (and, with ``mid``, the next
    block's attention), through ``ln_layer``'s frozen normalisation (``None``: none), along ``direction`` plus
    ``constant``; ``value`` is the target itself."""

    label: str
    blocks: int
    ln_layer: int | None
    normalised: bool
    direction: Tensor
    constant: float
    value: float
    mid: bool = False

    @property
    def attention_blocks(self) -> int:
        """How many blocks' attention the stream read holds."""
        return self.blocks + self.mid

    @classmethod
    def of(cls, model: Any, target: Target, cache: Any, logits: Tensor) -> _Reading:
        n_blocks = model.cfg.n_layers
        if target.token_id is not None:
            blocks, mid = (n_blocks, False) if target.hook_name is None else _reading_point(target.hook_name)
            if target.hook_name is None:
                value = logits[0, -1, target.token_id]
            else:
                value = model.unembed(model.ln_final(cache[target.hook_name][:, -1:]))[0, -1, target.token_id]
            label = target.label.replace("log P(", "logit(", 1)
            direction, constant = model.W_U[:, target.token_id], float(model.b_U[target.token_id])
            ln_layer = None if (blocks, mid) == (n_blocks, False) else blocks
            return cls(label, blocks, ln_layer, True, direction, constant, float(value), mid)
        if target.direction is None or target.hook_name is None:
            raise ValueError(
                f"head_attributions needs a target linear in the residual stream; {target.label} is not (use a "
                "hook_resid_pre or hook_resid_post hook)"
            )
        blocks, mid = _reading_point(target.hook_name)
        value = float(target(cache[target.hook_name][:, -1]).squeeze(0))
        return cls(target.label, blocks, None, False, target.direction, target.offset, value, mid)


def _reading_point(hook_name: str) -> tuple[int, bool]:
    """How many whole blocks the residual stream at ``hook_name`` holds, and whether it also holds the next block's
    attention (``hook_resid_mid``)."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|mid|post)", hook_name)
    if match is None:
        raise ValueError(f"head_attributions reads the residual stream (hook_resid_pre, _mid or _post), not {hook_name!r}")
    block, where = int(match.group(1)), match.group(2)
    return (block + 1, False) if where == "post" else (block, where == "mid")


class _Decomposition:
    """The residual stream's parts at the last position, projected on the reading's direction."""

    def __init__(self, model: Any, cache: Any, reading: _Reading) -> None:
        self.model, self.cache, self.reading = model, cache, reading
        self.resid_parts, self.resid_labels = cache.decompose_resid(
            layer=reading.blocks, mlp_input=reading.mid, mode="all", pos_slice=-1, return_labels=True
        )

    def project(self, stack: Float[Tensor, "n_parts 1 d_model"]) -> Float[Tensor, " n_parts"]:
        """Each part's contribution: normalisation frozen (if the target reads through one), then the direction."""
        if self.reading.normalised:
            stack = self.cache.apply_ln_to_stack(stack, layer=self.reading.ln_layer, mlp_input=self.reading.mid, pos_slice=-1)
        return (stack[:, 0].double() @ self.reading.direction.to(stack.device).double()).cpu()

    def embedding(self) -> float:
        kept = [index for index, label in enumerate(self.resid_labels) if label in ("embed", "pos_embed")]
        return float(self.project(self.resid_parts[kept]).sum())

    def mlps(self) -> Float[Tensor, " n_blocks"]:
        kept = [index for index, label in enumerate(self.resid_labels) if label.endswith("_mlp_out")]
        return self.project(self.resid_parts[kept]) if kept else torch.zeros(0, dtype=torch.float64)

    def head_totals(self) -> Float[Tensor, "n_blocks n_heads"]:
        """Each head's direct contribution from TransformerLens' ``stack_head_results``."""
        n_heads, blocks = self.model.cfg.n_heads, self.reading.attention_blocks
        if blocks == 0:
            return torch.zeros(0, n_heads, dtype=torch.float64)
        stack = self.cache.stack_head_results(layer=blocks, pos_slice=-1)
        return self.project(stack).view(blocks, n_heads)

    def per_source_heads(self) -> Float[Tensor, "n_blocks n_heads n_source"]:
        """pattern × value × ``W_O`` per head and source token, projected."""
        n_heads, n_source = self.model.cfg.n_heads, self.cache["hook_embed"].shape[1]
        result = torch.zeros(self.reading.attention_blocks, n_heads, n_source, dtype=torch.float64)
        for block in range(self.reading.attention_blocks):
            pattern = self.cache[f"blocks.{block}.attn.hook_pattern"][0, :, -1]
            values = self.cache[f"blocks.{block}.attn.hook_v"][0]
            values = values.repeat_interleave(n_heads // values.shape[1], dim=1)  # grouped-query attention
            written = einops.einsum(
                pattern, values, self.model.W_O[block], "head source, source head d_head, head d_head d_model -> head source d_model"
            )
            result[block] = self.project(written.reshape(n_heads * n_source, 1, -1)).view(n_heads, n_source)
        return result

    def attention_bias(self) -> Float[Tensor, " n_blocks"]:
        biases = []
        for block in range(self.reading.attention_blocks):
            bias = getattr(self.model.blocks[block].attn, "b_O", None)
            biases.append(torch.zeros(self.model.cfg.d_model) if bias is None else bias.detach().float().cpu())
        if not biases:
            return torch.zeros(0, dtype=torch.float64)
        device = self.cache["hook_embed"].device
        return self.project(torch.stack(biases).unsqueeze(1).to(device))


def _check_complete(result: HeadAttribution) -> None:
    """The parts must add up to the target itself, read from the forward pass, not only to each other."""
    parts = [result.heads.abs().sum(), result.attention_bias.abs().sum(), result.mlp.abs().sum()]
    scale = max(abs(result.target_value), abs(result.embedding) + abs(result.constant) + float(sum(parts)), 1.0)
    error = abs(result.total - result.target_value)
    if error > CONSISTENCY_TOLERANCE * scale:
        raise RuntimeError(
            f"the parts of {result.target_label} add up to {result.total:.6g}, not to its value {result.target_value:.6g} "
            "(more than float rounding): the installed TransformerLens decomposes the residual stream differently than "
            "lens_pivotal expects"
        )


def _check_consistency(per_source: Tensor, totals: Tensor) -> None:
    """The per-source split must add up to TransformerLens' own head results; if a new version changes what
    ``hook_pattern`` / ``hook_v`` / ``W_O`` hold, say so instead of returning wrong parts."""
    scale = max(float(totals.abs().max()) if totals.numel() else 0.0, 1.0)
    error = float((per_source - totals).abs().max()) if totals.numel() else 0.0
    if error > CONSISTENCY_TOLERANCE * scale:
        raise RuntimeError(
            f"pattern × value × W_O per source token differs from TransformerLens' stack_head_results by {error:.3g}: "
            "the installed TransformerLens stores attention differently than lens_pivotal expects"
        )
