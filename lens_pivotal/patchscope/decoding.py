"""Next-token decoding (PatchScope §4.1): does a layer's state, patched into an identity prompt, make the
model predict what it predicts itself? Compared with the logit lens and an affine lens.

Precision@1 of a (prompt, layer) is 1 when the argmax of the patched output equals the argmax of the
model's own output at the source position (not the gold next token); surprisal is ``-log p_source`` of
the patched argmax under the model's own next-token distribution, in nats.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal.lenses import AffineMap, logit_lens
from lens_pivotal.patchscope.core import IDENTITY_PROMPT, TargetPrompt, check_layer, patched_logits
from lens_pivotal.patchscope.relations import relation_prompts
from lens_pivotal.resid.cache import cache_resid_post, resolve_layers
from lens_pivotal.tokens import Tokenization, token_ids
from lens_pivotal.viz.tables import format_table

BASELINES = ("logit_lens", "affine")
AFFINE_CORPUS_SEED = 1  # relation prompts for the affine lens's fit are drawn with their own seed
TargetLayers = Union[Literal["same"], int, Sequence[int]]


@dataclass
class DecodingResult:
    """Per-layer next-token decoding results for the identity patchscope and its baselines.

    ``hits`` / ``surprisals`` / ``top_tokens`` are keyed by method (``"patchscope"``, ``"logit_lens"``,
    ``"affine"``) and indexed ``[layer index, prompt]``. With several target prompts, the patchscope's
    hits and surprisals are averaged over them and its top tokens are the first prompt's.
    """

    layers: list[int]
    target_layers: list[int]
    prompts: list[str]
    train_prompts: list[str]
    target_prompts: list[str]
    model_top_tokens: list[str]
    top_tokens: dict[str, list[list[str]]]
    hits: dict[str, Float[Tensor, "n_layers n_prompts"]]
    surprisals: dict[str, Float[Tensor, "n_layers n_prompts"]]
    affine_texts: list[str] = field(default_factory=list)

    @property
    def precision_at_1(self) -> dict[str, Float[Tensor, " n_layers"]]:
        """Per method, the fraction of evaluated prompts whose decoded top-1 matches the model's own."""
        return {method: hits.mean(dim=1) for method, hits in self.hits.items()}

    @property
    def surprisal(self) -> dict[str, Float[Tensor, " n_layers"]]:
        """Per method, the mean surprisal (nats) of the decoded top-1 under the model's own distribution."""
        return {method: values.mean(dim=1) for method, values in self.surprisals.items()}

    def table(self) -> str:
        """A fixed-width table: one row per layer, P@1 and surprisal per method."""
        methods = list(self.hits)
        precision, surprisal = self.precision_at_1, self.surprisal
        rows = [
            [str(layer)] + [f"{precision[m][index]:.3f}" for m in methods] + [f"{surprisal[m][index]:.2f}" for m in methods]
            for index, layer in enumerate(self.layers)
        ]
        return format_table(["layer", *(f"P@1 {m}" for m in methods), *(f"surp {m}" for m in methods)], rows)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary of every field, with per-layer summaries."""
        return {
            "layers": self.layers,
            "target_layers": self.target_layers,
            "prompts": self.prompts,
            "train_prompts": self.train_prompts,
            "affine_texts": self.affine_texts,
            "target_prompts": self.target_prompts,
            "model_top_tokens": self.model_top_tokens,
            "precision_at_1": {m: v.tolist() for m, v in self.precision_at_1.items()},
            "surprisal": {m: v.tolist() for m, v in self.surprisal.items()},
            "top_tokens": self.top_tokens,
        }


def next_token_decoding(
    model: TransformerBridge,
    prompts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    target_prompt: str | Sequence[str] = IDENTITY_PROMPT,
    source_positions: int | Sequence[int] = -1,
    target_layers: TargetLayers = "same",
    baselines: Sequence[str] = BASELINES,
    batch_size: int = 512,
    source_batch_size: int = 64,
    train_fraction: float = 0.5,
    ridge: float = 1e-3,
    affine_texts: int | Sequence[str] = 256,
    seed: int = 0,
    tokenization: Tokenization = "tokenizer",
    progress: bool = True,
) -> DecodingResult:
    """Next-token decoding of ``prompts`` at every requested layer.

    Args:
        model: the TransformerLens model (source and target).
        prompts: source texts; each is read at its ``source_positions`` entry.
        layers: source blocks (default: all).
        target_prompt: the identity prompt, or several (e.g. :func:`random_identity_prompts`), averaged.
        source_positions: one position for all prompts or one per prompt (negatives from the end).
        target_layers: ``"same"`` (ℓ* = ℓ), one block for every source layer, or one per source layer.
        baselines: any of ``"logit_lens"`` and ``"affine"``. The affine lens (ℓ → last block, least
            squares with ``ridge``; the identity at the last block) is fitted on every token but the first of a
            ``train_fraction`` split of the prompts plus ``affine_texts``, and every method is then evaluated on
            the other prompts only.
        affine_texts: more fitting text for the affine lens: a list of strings, or a number of
            :func:`~lens_pivotal.patchscope.relation_prompts` (the shipped LRE relations) that are not among the
            evaluated prompts. A map onto hundreds of dimensions needs thousands of token states.
        batch_size: (prompt, layer) rows per patched forward pass; each row costs about one token.
        source_batch_size: prompts per forward pass when reading the source states.
        seed: seed of the train/evaluation split.
        tokenization: how prompts are tokenized (:mod:`lens_pivotal.tokens`).
        progress: show a tqdm bar over the patched batches.
    """
    prompts = _check_prompts(prompts)
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"baselines must be among {BASELINES}, got {sorted(unknown)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    layer_list = resolve_layers(model, layers)
    targets = _target_layers(model, layer_list, target_layers)
    target_texts = [target_prompt] if isinstance(target_prompt, str) else list(target_prompt)
    positions = _positions(source_positions, len(prompts))
    evaluated, trained = _split(len(prompts), train_fraction, seed) if "affine" in baselines else (list(range(len(prompts))), [])

    last = model.cfg.n_layers - 1
    read = sorted({*layer_list, last})
    states = cache_resid_post(
        model, [prompts[i] for i in evaluated], [positions[i] for i in evaluated], layers=read,
        batch_size=source_batch_size, tokenization=tokenization, progress=False,
    )
    own_logp = torch.log_softmax(logit_lens(model, states[read.index(last)]).float(), dim=-1).cpu()
    layer_states = states[[read.index(layer) for layer in layer_list]]

    tops = {"patchscope": _patchscope_tops(model, layer_states, targets, target_texts, batch_size, tokenization, progress)}
    if "logit_lens" in baselines:
        tops["logit_lens"] = [_lens_tops(model, layer_states)]
    extra_texts = []
    if "affine" in baselines:
        extra_texts = _extra_fit_texts(affine_texts, {prompts[i] for i in evaluated})
        maps = _fit_affine_lenses(model, [prompts[i] for i in trained] + extra_texts, read, ridge, source_batch_size, tokenization)
        tops["affine"] = [_lens_tops(model, layer_states, [maps[layer] for layer in layer_list])]

    own_top = own_logp.argmax(dim=-1)
    decode = _token_decoder(model)
    return DecodingResult(
        layers=layer_list,
        target_layers=targets,
        prompts=[prompts[i] for i in evaluated],
        train_prompts=[prompts[i] for i in trained],
        target_prompts=target_texts,
        model_top_tokens=decode(own_top),
        top_tokens={method: [decode(row) for row in top[0]] for method, top in tops.items()},
        hits={method: torch.stack([(top == own_top).float() for top in runs]).mean(0) for method, runs in tops.items()},
        surprisals={method: torch.stack([-own_logp.gather(1, top.T).T for top in runs]).mean(0) for method, runs in tops.items()},
        affine_texts=extra_texts,
    )


def _patchscope_tops(
    model: TransformerBridge,
    layer_states: Float[Tensor, "n_layers n_prompts d_model"],
    target_layers: list[int],
    target_texts: list[str],
    batch_size: int,
    tokenization: Tokenization,
    progress: bool,
) -> list[Int[Tensor, "n_layers n_prompts"]]:
    """Patched top-1 per (layer, prompt), one tensor per target prompt; rows of all layers share batches."""
    n_layers, n_prompts, _ = layer_states.shape
    vectors = layer_states.reshape(n_layers * n_prompts, -1)
    row_layers = [layer for layer in target_layers for _ in range(n_prompts)]
    results = []
    for text in target_texts:
        target = TargetPrompt.from_model(model, text, tokenization=tokenization)
        top = torch.empty(len(vectors), dtype=torch.long)
        starts = range(0, len(vectors), batch_size)
        for start in tqdm(starts, disable=not progress, desc="patchscope", unit="batch"):
            rows = slice(start, start + batch_size)
            top[rows] = patched_logits(model, target, vectors[rows], row_layers[rows]).argmax(dim=-1).cpu()
        results.append(top.reshape(n_layers, n_prompts))
    return results


def _lens_tops(
    model: TransformerBridge,
    layer_states: Float[Tensor, "n_layers n_prompts d_model"],
    maps: Sequence[AffineMap] | None = None,
) -> Int[Tensor, "n_layers n_prompts"]:
    """Top-1 of the logit lens (or of the affine lens when ``maps`` are given), one layer at a time."""
    tops = []
    for index, states in enumerate(layer_states):
        mapped = maps[index](states) if maps is not None else states
        tops.append(logit_lens(model, mapped).argmax(dim=-1).cpu())
    return torch.stack(tops)


def _extra_fit_texts(affine_texts: int | Sequence[str], evaluated: set[str]) -> list[str]:
    """The affine lens's extra fitting texts: the list given, or that many relation prompts not evaluated."""
    if not isinstance(affine_texts, int):
        return [text for text in affine_texts if text not in evaluated]
    if affine_texts <= 0:
        return []
    candidates = relation_prompts(affine_texts + len(evaluated), seed=AFFINE_CORPUS_SEED)
    return [text for text in candidates if text not in evaluated][:affine_texts]


def _fit_affine_lenses(
    model: TransformerBridge, texts: list[str], layers: list[int], ridge: float, batch_size: int, tokenization: Tokenization
) -> dict[int, AffineMap]:
    """One least-squares map per layer onto the last block, from every token but the first of ``texts``; the
    last block maps onto itself exactly."""
    ids = [token_ids(model, text, tokenization=tokenization, what=f"affine text {i}", device="cpu") for i, text in enumerate(texts)]
    positions = [list(range(1, len(tokens))) or [0] for tokens in ids]
    states = cache_resid_post(model, ids, positions, layers=layers, batch_size=batch_size, progress=False)
    last = model.cfg.n_layers - 1
    return {
        layer: AffineMap.identity(model.cfg.d_model) if layer == last else AffineMap.fit(states[index], states[-1], ridge=ridge)
        for index, layer in enumerate(layers)
    }


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise TypeError("prompts must be a non-empty list of strings (wrap a single prompt in a list)")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompts[{index}] must be a non-empty string, got {prompt!r}")
    return list(prompts)


def _positions(source_positions: int | Sequence[int], n_prompts: int) -> list[int]:
    if isinstance(source_positions, int):
        return [source_positions] * n_prompts
    if len(source_positions) != n_prompts:
        raise ValueError(f"source_positions has {len(source_positions)} entries for {n_prompts} prompts")
    return list(source_positions)


def _target_layers(model: TransformerBridge, layers: list[int], target_layers: TargetLayers) -> list[int]:
    if target_layers == "same":
        return list(layers)
    if isinstance(target_layers, int):
        return [check_layer(model, target_layers, "target_layers")] * len(layers)
    if isinstance(target_layers, str) or len(target_layers) != len(layers):
        raise ValueError(f"target_layers must be 'same', an int, or one block per source layer ({len(layers)}), got {target_layers!r}")
    return [check_layer(model, layer, f"target_layers[{index}]") for index, layer in enumerate(target_layers)]


def _split(n_prompts: int, train_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(evaluated, trained) prompt indices, each in the original order."""
    n_train = round(n_prompts * train_fraction)
    if not 0 < n_train < n_prompts:
        raise ValueError(
            f"the affine baseline needs prompts to split: train_fraction={train_fraction} of {n_prompts} prompts "
            f"leaves {n_train} to fit and {n_prompts - n_train} to evaluate (both must be at least 1)"
        )
    order = random.Random(seed).sample(range(n_prompts), n_prompts)
    return sorted(order[n_train:]), sorted(order[:n_train])


def _token_decoder(model: TransformerBridge):
    def decode(ids: Int[Tensor, " n"]) -> list[str]:
        return model.tokenizer.batch_decode(ids.reshape(-1, 1).tolist())

    return decode


def random_identity_prompts(model: TransformerBridge, n: int = 5, *, max_pairs: int = 10, seed: int = 0) -> list[str]:
    """The PatchScope reimplementation's random-token identity prompts, ``"tok -> tok; ...; ?"`` with 1 to ``max_pairs`` pairs.

    Tokens are drawn from the vocabulary entries that decode to a plain alphabetic word.
    """
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        pairs = [_random_word(model, rng) for _ in range(rng.randint(1, max_pairs))]
        prompts.append("; ".join(f"{word} -> {word}" for word in pairs) + "; ?")
    return prompts


def _random_word(model: TransformerBridge, rng: random.Random) -> str:
    """A random vocabulary entry that decodes to a plain ASCII alphabetic word."""
    while True:
        word = model.tokenizer.decode([rng.randrange(model.cfg.d_vocab)]).strip()
        if word.isascii() and word.isalpha():
            return word


@dataclass
class TokenGrid:
    """The identity patchscope's top-1 token for every (layer, position) of one prompt."""

    tokens: list[str]
    layers: list[int]
    top_tokens: list[list[str]]
    probs: Float[Tensor, "n_layers seq"]


def decode_positions(
    model: TransformerBridge,
    prompt: str,
    *,
    layers: Sequence[int] | None = None,
    target_prompt: str = IDENTITY_PROMPT,
    batch_size: int = 512,
    tokenization: Tokenization = "tokenizer",
) -> TokenGrid:
    """Patch every position of ``prompt`` at every layer into ``target_prompt`` (ℓ* = ℓ) and read the top-1."""
    layer_list = resolve_layers(model, layers)
    tokens = token_ids(model, prompt, tokenization=tokenization, what="prompt")
    states = cache_resid_post(model, [tokens], [list(range(len(tokens)))], layers=layer_list, progress=False)
    vectors = states.reshape(-1, states.shape[-1])
    row_layers = [layer for layer in layer_list for _ in range(len(tokens))]
    target = TargetPrompt.from_model(model, target_prompt, tokenization=tokenization)
    probs = []
    for start in range(0, len(vectors), batch_size):
        rows = slice(start, start + batch_size)
        probs.append(torch.softmax(patched_logits(model, target, vectors[rows], row_layers[rows]).float(), dim=-1).max(dim=-1))
    top_prob = torch.cat([p.values for p in probs]).cpu().reshape(len(layer_list), -1)
    top_ids = torch.cat([p.indices for p in probs]).cpu().reshape(len(layer_list), -1)
    decode = _token_decoder(model)
    return TokenGrid(model.to_str_tokens(tokens), layer_list, [decode(row) for row in top_ids], top_prob)
