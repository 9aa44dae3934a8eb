"""Every PatchScope path that generates from a KV cache, against a plain HF model with no cache (a full forward per
step, the patch written at the same prompt position in each), on every test family. The patched vectors are HF's own
source states in our convention (centred on LayerNorm models, which HF's stream need not be: LayerNorm is blind to
the difference)."""

from __future__ import annotations

import pytest
import torch
from conftest import family_params, hf_resid_states, hf_token_ids

from lens_pivotal.patchscope import IDENTITY_PROMPT, Patchscope, attribute_extraction, entity_description, load_relation
from lens_pivotal.patchscope.attributes import DEFAULT_SOURCE_TEMPLATE, ENTITY_DESCRIPTION_PROMPT
from lens_pivotal.patchscope.core import TargetPrompt, decode_continuations, patched_generate
from lens_pivotal.patchscope.relations import PLACEHOLDER
from lens_pivotal.testing import reference_greedy_tokens, reference_logits

SOURCES = ["The Eiffel Tower is in the city of", "Wolfgang Amadeus Mozart"]
NEW_TOKENS = 6
ARCHS = family_params()


def hf_source_state(reference, text: str, layer: int) -> torch.Tensor:
    """Block ``layer``'s output at the last token of ``text`` in plain HF, in our convention."""
    return hf_resid_states(reference, hf_token_ids(reference, text))[layer + 1][0, -1]


def reference_text(model, reference, tokens: torch.Tensor, layer: int, position: int, vector: torch.Tensor) -> str:
    new = reference_greedy_tokens(reference, tokens[None], NEW_TOKENS, patch=(layer, position, vector))
    return decode_continuations(model, new)[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_patched_generation_equals_the_uncached_reference(family_models, arch):
    model, reference = family_models(arch)
    layers = [0, model.cfg.n_layers // 2, model.cfg.n_layers - 1]
    vectors = torch.stack([hf_source_state(reference, SOURCES[0], layer) for layer in layers])
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
        vector = hf_source_state(reference, SOURCES[1], layer)
        assert described[layer] == reference_text(model, reference, tokens, layer, len(tokens) - 1, vector), layer


@pytest.mark.parametrize("arch", family_params(("qwen2", "gpt2")))
def test_inspect_generation_equals_the_uncached_reference(family_models, arch):
    model, reference = family_models(arch)
    result = Patchscope(SOURCES[0], 1, max_new_tokens=NEW_TOKENS).inspect(model)
    vector = hf_source_state(reference, SOURCES[0], 1)
    tokens = hf_token_ids(reference, IDENTITY_PROMPT)[0]
    assert result.generation == reference_text(model, reference, tokens, 1, len(tokens) - 1, vector)
    expected = reference_logits(reference, tokens[None], patch=(1, len(tokens) - 1, vector))[0, -1]
    # compatibility mode centres the unembedding over the vocabulary
    torch.testing.assert_close(result.logits - result.logits.mean(), expected - expected.mean(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", family_params(("qwen3", "llama", "neox")))
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
            vector = hf_source_state(reference, DEFAULT_SOURCE_TEMPLATE.format(subject), source)
            assert result.generations[sample][s][0] == reference_text(model, reference, target, 1, position, vector)
        plain = hf_token_ids(reference, relation.plain_prompt(subject))[0]
        expected_plain = decode_continuations(model, reference_greedy_tokens(reference, plain[None], NEW_TOKENS))[0]
        assert result.plain_generations[sample] == expected_plain, "left-padded batch vs one unpadded prompt"
