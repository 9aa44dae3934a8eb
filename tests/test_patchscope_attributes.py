"""Relations loader, attribute extraction (batched rows vs single patchscopes) and entity description."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch

from lens_pivotal.patchscope import Patchscope, list_relations, load_relation, relation_prompts
from lens_pivotal.patchscope.attributes import (
    ENTITY_DESCRIPTION_PROMPT,
    attribute_extraction,
    entity_description,
    mentions,
)


def test_relations_ship_with_licence_and_load_by_name():
    data = Path(str(resources.files("lens_pivotal") / "data" / "relations"))
    assert "MIT" in (data / "LICENSE").read_text() and "evandez/relations" in (data / "SOURCE.txt").read_text()
    names = list_relations()
    assert len(names) == 47 and "country_capital_city" in names
    relation = load_relation("country capital city")
    assert relation.category == "factual" and ("France", "Paris") in relation.samples
    with pytest.raises(ValueError, match="unknown relation 'capitals'.*country_capital_city"):
        load_relation("capitals")


@pytest.mark.parametrize(
    "name,target",
    [
        ("country_capital_city", "The capital city of x"),
        ("fruit_outside_color", "On the outside, the color of x"),
        ("country_currency", "The official currency of x"),
        ("substance_phase", "At room temperature, the phase of matter of x"),
        ("adj_antonym", "The opposite of x"),
        ("food_from_country", "x originates from"),
    ],
)
def test_target_prompts_are_the_papers_or_derived_from_the_template(name, target):
    relation = load_relation(name)
    assert relation.target_prompt == target
    subject = relation.samples[0][0]
    assert relation.plain_prompt(subject) == target.replace("x", subject)


def test_mentions_ignores_spaces_and_case():
    assert mentions(" is Washington D. C., the", "Washington D.C.")
    assert mentions("PARIS!", "Paris")
    assert not mentions("Lyon", "Paris")


def test_relation_prompts_are_distinct_and_mix_relations():
    prompts = relation_prompts(60, seed=0)
    assert len(set(prompts)) == 60
    assert any(p.startswith("The capital city of") for p in prompts) and any(p.startswith("The opposite of") for p in prompts)
    with pytest.raises(ValueError, match="n must be"):
        relation_prompts(0)


def test_batched_attribute_extraction_matches_single_patchscopes(tiny_qwen3_model):
    model = tiny_qwen3_model
    result = attribute_extraction(
        model, "food_from_country", source_layers=[0, 2], target_layers=[1, 2], max_samples=3, max_new_tokens=4,
        batch_size=5, progress=False,  # 12 rows: the last batch is partial
    )
    assert result.correct.shape == (3, 2, 2) and result.accuracy.shape == (2, 2)
    assert len(result.plain_generations) == 3 and result.plain_correct.shape == (3,)
    relation = load_relation("food_from_country")
    position = model.to_tokens("x").shape[1] - 1  # "x originates from": the placeholder is the first real token
    for sample, s, t in [(0, 0, 0), (2, 1, 1), (1, 1, 0)]:
        single = Patchscope(
            f"Tell me about {result.subjects[sample]}", [0, 2][s], target_prompt=relation.target_prompt,
            target_layer=[1, 2][t], target_position=position, max_new_tokens=4,
        ).inspect(model)
        assert result.generations[sample][s][t] == single.generation
    json.dumps(result.to_dict())


def test_accuracy_conditioned_on_plain_answers(tiny_qwen3_model):
    result = attribute_extraction(
        tiny_qwen3_model, "country_capital_city", source_layers=[1], target_layers=[1], max_samples=2,
        max_new_tokens=2, progress=False,
    )
    result.correct[:] = torch.tensor([True, False]).reshape(2, 1, 1)
    result.plain_correct[:] = torch.tensor([False, True])
    assert result.accuracy.item() == 0.5
    assert result.accuracy_given_plain_correct.item() == 0.0
    result.plain_correct[:] = False
    assert torch.isnan(result.accuracy_given_plain_correct).all()


def test_entity_description_and_bad_input(tiny_qwen3_model):
    descriptions = entity_description(tiny_qwen3_model, "Leonardo da Vinci", max_new_tokens=3)
    assert list(descriptions) == [0, 1, 2] and all(isinstance(text, str) for text in descriptions.values())
    assert ENTITY_DESCRIPTION_PROMPT.endswith(", x")
    with pytest.raises(ValueError, match="source_template must end"):
        attribute_extraction(tiny_qwen3_model, "adj_antonym", source_template="{} is", progress=False)
    with pytest.raises(IndexError, match="layer 7 is out of range"):
        attribute_extraction(tiny_qwen3_model, "adj_antonym", source_layers=[7], progress=False)
