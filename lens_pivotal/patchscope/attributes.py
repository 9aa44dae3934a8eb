"""Attribute extraction (PatchScope §4.2) and entity description (§4.3): generate from a target prompt
whose placeholder holds the subject's hidden state.

For a relation, the source is a short context ending at the subject, read at the subject's last token;
the target is the relation's placeholder prompt (``"The capital city of x"``), patched at the ``x`` in
the prompt pass only, then continued greedily. A generation is correct when the object appears in it,
ignoring whitespace and case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal.patchscope.core import TargetPrompt, decode_continuations, patched_generate
from lens_pivotal.patchscope.relations import PLACEHOLDER, Relation, load_relation
from lens_pivotal.resid.cache import cache_resid_post, resolve_layers
from lens_pivotal.tokens import Tokenization, token_ids

DEFAULT_SOURCE_TEMPLATE = "Tell me about {}"
ENTITY_DESCRIPTION_PROMPT = (
    "Syria: Country in the Middle East, Leonardo DiCaprio: American actor, Samsung: South Korean multinational "
    "major appliance and consumer electronics corporation, x"
)


def mentions(generation: str, answer: str) -> bool:
    """Whether ``answer`` appears in ``generation``, ignoring whitespace and case."""
    def squash(text: str) -> str:
        return "".join(text.split()).lower()

    return squash(answer) in squash(generation)


@dataclass
class AttributeResult:
    """Correctness of every (sample, source layer ℓ, target layer ℓ*) patched generation of one relation."""

    relation: str
    target_prompt: str
    source_layers: list[int]
    target_layers: list[int]
    subjects: list[str]
    objects: list[str]
    generations: list[list[list[str]]]
    correct: Bool[Tensor, "n_samples n_source n_target"]
    plain_generations: list[str]
    plain_correct: Bool[Tensor, " n_samples"]

    @property
    def accuracy(self) -> Float[Tensor, "n_source n_target"]:
        """Fraction of samples correct at each (ℓ, ℓ*)."""
        return self.correct.float().mean(dim=0)

    @property
    def accuracy_given_plain_correct(self) -> Float[Tensor, "n_source n_target"]:
        """Accuracy over the samples the model answers correctly from the plain prompt (NaN if none)."""
        known = self.correct[self.plain_correct]
        return known.float().mean(dim=0) if len(known) else torch.full(self.accuracy.shape, float("nan"))

    def to_dict(self) -> dict:
        """A JSON-ready dictionary of the inputs, generations and accuracies."""
        return {
            "relation": self.relation,
            "target_prompt": self.target_prompt,
            "source_layers": self.source_layers,
            "target_layers": self.target_layers,
            "subjects": self.subjects,
            "objects": self.objects,
            "generations": self.generations,
            "plain_generations": self.plain_generations,
            "plain_correct": self.plain_correct.tolist(),
            "accuracy": self.accuracy.tolist(),
            "accuracy_given_plain_correct": self.accuracy_given_plain_correct.tolist(),
        }


def attribute_extraction(
    model: TransformerBridge,
    relation: str | Relation,
    *,
    source_layers: Sequence[int] | None = None,
    target_layers: Sequence[int] | None = None,
    max_samples: int | None = None,
    max_new_tokens: int = 20,
    source_template: str = DEFAULT_SOURCE_TEMPLATE,
    batch_size: int = 64,
    tokenization: Tokenization = "tokenizer",
    progress: bool = True,
) -> AttributeResult:
    """Attribute extraction for one relation over every (sample, ℓ, ℓ*).

    Args:
        model: the TransformerLens model (source and target).
        relation: a name from :func:`~lens_pivotal.patchscope.list_relations` or a loaded relation.
        source_layers / target_layers: blocks ℓ and ℓ* (default: all).
        max_samples: use the relation's first ``max_samples`` samples (default: all).
        max_new_tokens: greedy continuation length.
        source_template: the source context, ``{}`` standing for the subject, which must end it.
        batch_size: patched rows per ``generate`` call; rows of all (sample, ℓ, ℓ*) share batches.
        tokenization: how the prompts are tokenized (:mod:`lens_pivotal.tokens`).
        progress: show a tqdm bar over the batches.
    """
    relation = load_relation(relation) if isinstance(relation, str) else relation
    if not source_template.endswith("{}"):
        raise ValueError(f"source_template must end with '{{}}' (the subject's last token is read), got {source_template!r}")
    samples = relation.samples[:max_samples] if max_samples is not None else relation.samples
    if not samples:
        raise ValueError(f"relation {relation.name!r} has no samples to evaluate (max_samples={max_samples})")
    sources = resolve_layers(model, source_layers)
    targets = resolve_layers(model, target_layers)
    subjects = [subject for subject, _ in samples]
    sources_text = [source_template.format(s) for s in subjects]
    states = cache_resid_post(model, sources_text, [-1] * len(subjects), layers=sources, tokenization=tokenization, progress=False)

    target_ids = token_ids(model, relation.target_prompt, tokenization=tokenization, what="target prompt")
    target = TargetPrompt(target_ids, _placeholder_position(model, relation, tokenization), None)
    rows = [(sample, s, t) for sample in range(len(samples)) for s in range(len(sources)) for t in range(len(targets))]
    generations: list[str] = []
    for start in tqdm(range(0, len(rows), batch_size), disable=not progress, desc=relation.name, unit="batch"):
        batch = rows[start : start + batch_size]
        vectors = torch.stack([states[s, sample] for sample, s, _ in batch])
        generations += patched_generate(model, target, vectors, [targets[t] for _, _, t in batch], max_new_tokens=max_new_tokens)

    shape = (len(samples), len(sources), len(targets))
    correct = torch.tensor([mentions(text, samples[sample][1]) for text, (sample, _, _) in zip(generations, rows)]).reshape(shape)
    plain = _plain_generations(model, [relation.plain_prompt(s) for s in subjects], max_new_tokens, tokenization)
    return AttributeResult(
        relation=relation.name,
        target_prompt=relation.target_prompt,
        source_layers=sources,
        target_layers=targets,
        subjects=subjects,
        objects=[obj for _, obj in samples],
        generations=_chunks(_chunks(generations, len(targets)), len(sources)),
        correct=correct,
        plain_generations=plain,
        plain_correct=torch.tensor([mentions(text, obj) for text, (_, obj) in zip(plain, samples)], dtype=torch.bool),
    )


def entity_description(
    model: TransformerBridge,
    source_prompt: str,
    *,
    layers: Sequence[int] | None = None,
    source_position: int = -1,
    max_new_tokens: int = 20,
    tokenization: Tokenization = "tokenizer",
) -> dict[int, str]:
    """What the model "says" about the entity ending ``source_prompt``, per layer (ℓ* = ℓ).

    The target is the paper's few-shot description prompt ending in the placeholder ``x``. Layers
    default to 0–9, as in the paper (fewer when the model has fewer blocks).
    """
    layer_list = resolve_layers(model, layers if layers is not None else range(min(10, model.cfg.n_layers)))
    states = cache_resid_post(
        model, [source_prompt], [source_position], layers=layer_list, tokenization=tokenization, progress=False
    )[:, 0]
    tokens = token_ids(model, ENTITY_DESCRIPTION_PROMPT, tokenization=tokenization)
    target = TargetPrompt(tokens, len(tokens) - 1, None)
    texts = patched_generate(model, target, states, layer_list, max_new_tokens=max_new_tokens)
    return dict(zip(layer_list, texts))


def _chunks(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive lists of ``size``."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def _placeholder_position(model: TransformerBridge, relation: Relation, tokenization: Tokenization) -> int:
    """Index of the placeholder's (last) token in the target prompt."""
    template = relation.target_template
    up_to_placeholder = template[: template.index("{}")] + PLACEHOLDER
    return len(token_ids(model, up_to_placeholder, tokenization=tokenization)) - 1


def _plain_generations(
    model: TransformerBridge, prompts: list[str], max_new_tokens: int, tokenization: Tokenization
) -> list[str]:
    """Greedy continuations of unpatched prompts, batched with left padding."""
    ids = [token_ids(model, prompt, tokenization=tokenization, what=f"plain prompt {i}") for i, prompt in enumerate(prompts)]
    width = max(map(len, ids))
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(ids), width), pad, dtype=torch.long, device=ids[0].device)
    mask = torch.zeros_like(tokens)
    for row, row_ids in enumerate(ids):
        tokens[row, width - len(row_ids) :] = row_ids
        mask[row, width - len(row_ids) :] = 1
    with torch.inference_mode():
        out = model.generate(
            tokens, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, verbose=False, return_type="tokens"
        )
    return decode_continuations(model, out[:, tokens.shape[1] :])
