"""Every PatchScope path that generates from a KV cache, against a plain HF model with no cache (a full forward per
step, the patch written at the same prompt position in each), on the tiny Qwen3, Qwen2, Llama and the embedded model."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, hf_token_ids

import lens_pivotal as lp
from lens_pivotal.patchscope import IDENTITY_PROMPT, Patchscope, attribute_extraction, entity_description, load_relation
from lens_pivotal.patchscope.attributes import DEFAULT_SOURCE_TEMPLATE, ENTITY_DESCRIPTION_PROMPT
from lens_pivotal.patchscope.core import TargetPrompt, decode_continuations, patched_generate
from lens_pivotal.patchscope.relations import PLACEHOLDER
from lens_pivotal.testing import reference_greedy_tokens

SOURCES = ["The Eiffel Tower is in the city of", "Wolfgang Amadeus Mozart"]
NEW_TOKENS = 6
ARCHS = [pytest.param(arch, marks=pytest.mark.slow) if arch == "embedded" else arch for arch in FAMILIES]


def reference_text(model, reference, tokens: torch.Tensor, layer: int, position: int, vector: torch.Tensor) -> str:
    new = reference_greedy_tokens(reference, tokens[None], NEW_TOKENS, patch=(layer, position, vector))
    return decode_continuations(model, new)[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_patched_generation_equals_the_uncached_reference(family_models, arch):
    model, reference = family_models(arch)
    layers = [0, model.cfg.n_layers // 2, model.cfg.n_layers - 1]
    states = lp.cache_resid_post(model, SOURCES[:1] * len(layers), [-1] * len(layers), layers=layers, progress=False)
    vectors = states[torch.arange(len(layers)), torch.arange(len(layers))]
    tokens = hf_token_ids(reference, IDENTITY_PROMPT)[0]
    target = TargetPrompt(tokens, len(tokens) - 1, None)
    texts = patched_generate(model, target, vectors, layers, max_new_tokens=NEW_TOKENS)
    expected = [reference_text(model, reference, tokens, l, len(tokens) - 1, v) for l, v in zip(layers, vectors)]
    assert texts == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_entity_description_equals_the_uncached_reference(family_models, arch):
    model, reference = family_models(arch)
    layers = [1, model.cfg.n_layers - 1]
    described = entity_description(model, SOURCES[1], layers=layers, max_new_tokens=NEW_TOKENS)
    tokens = hf_token_ids(reference, ENTITY_DESCRIPTION_PROMPT)[0]
    for layer in layers:
        vector = lp.cache_resid_post(model, [SOURCES[1]], [-1], layers=[layer], progress=False)[0, 0]
        assert described[layer] == reference_text(model, reference, tokens, layer, len(tokens) - 1, vector), layer


def test_inspect_generation_equals_the_uncached_reference(family_models):
    model, reference = family_models("qwen2")
    result = Patchscope(SOURCES[0], 1, max_new_tokens=NEW_TOKENS).inspect(model)
    vector = lp.cache_resid_post(model, [SOURCES[0]], [-1], layers=[1], progress=False)[0, 0]
    tokens = hf_token_ids(reference, IDENTITY_PROMPT)[0]
    assert result.generation == reference_text(model, reference, tokens, 1, len(tokens) - 1, vector)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_attribute_extraction_equals_the_uncached_reference(family_models, arch):
    model, reference = family_models(arch)
    relation = load_relation("country_capital_city")
    result = attribute_extraction(
        model, relation, source_layers=[0, 2], target_layers=[1], max_samples=2, max_new_tokens=NEW_TOKENS,
        batch_size=3, progress=False,
    )  # fmt: skip
    target = hf_token_ids(reference, relation.target_prompt)[0]
    template = relation.target_template
    position = hf_token_ids(reference, template[: template.index("{}")] + PLACEHOLDER).shape[1] - 1
    for sample, subject in enumerate(result.subjects):
        for s, source in enumerate(result.source_layers):
            source_text = DEFAULT_SOURCE_TEMPLATE.format(subject)
            vector = lp.cache_resid_post(model, [source_text], [-1], layers=[source], progress=False)[0, 0]
            assert result.generations[sample][s][0] == reference_text(model, reference, target, 1, position, vector)
        plain = hf_token_ids(reference, relation.plain_prompt(subject))[0]
        expected_plain = decode_continuations(model, reference_greedy_tokens(reference, plain[None], NEW_TOKENS))[0]
        assert result.plain_generations[sample] == expected_plain, "left-padded batch vs one unpadded prompt"
