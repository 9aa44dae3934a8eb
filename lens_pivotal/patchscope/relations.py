"""The LRE relations (Hernandez et al. 2023, MIT) shipped in ``lens_pivotal/data/relations``.

Each relation has prompt templates with a ``{}`` for the subject and (subject, object) samples. The
PatchScope attribute-extraction target prompt puts a placeholder ``x`` where the subject goes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

PLACEHOLDER = "x"
# The paper's target prompts (Ghandeharioun et al. 2024, Table 5); others are derived from the template.
PAPER_TARGET_TEMPLATES = {
    "country_capital_city": "The capital city of {}",
    "fruit_outside_color": "On the outside, the color of {}",
    "country_currency": "The official currency of {}",
    "substance_phase": "At room temperature, the phase of matter of {}",
}


@dataclass(frozen=True)
class Relation:
    """One relation: its name, category, prompt templates and (subject, object) samples."""

    name: str
    category: str
    prompt_templates: tuple[str, ...]
    samples: tuple[tuple[str, str], ...]

    @property
    def target_template(self) -> str:
        """The placeholder target prompt with ``{}`` for the placeholder.

        The paper's prompt for the four relations it names; otherwise the first template cut right
        after the subject, or the whole template when the subject comes first ("{} plays the").
        """
        if self.name in PAPER_TARGET_TEMPLATES:
            return PAPER_TARGET_TEMPLATES[self.name]
        template = self.prompt_templates[0]
        cut = template.index("{}")
        return template[: cut + 2] if cut > 0 else template

    @property
    def target_prompt(self) -> str:
        """:attr:`target_template` with the placeholder ``x`` in place of the subject."""
        return self.target_template.replace("{}", PLACEHOLDER)

    def plain_prompt(self, subject: str) -> str:
        """The target prompt with the real subject: what the model answers without any patching."""
        return self.target_template.replace("{}", subject)


def _data_dir() -> Path:
    return Path(str(resources.files("lens_pivotal") / "data" / "relations"))


@lru_cache(maxsize=None)
def _relation_files() -> dict[str, Path]:
    return {path.stem: path for path in sorted(_data_dir().glob("*/*.json"))}


def list_relations() -> list[str]:
    """Names of every shipped relation (file stems such as ``"country_capital_city"``)."""
    return sorted(_relation_files())


def load_relation(name: str) -> Relation:
    """Load a relation by name (``"country_capital_city"``; spaces are accepted for underscores).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    key = name.strip().replace(" ", "_")
    files = _relation_files()
    if key not in files:
        raise ValueError(f"unknown relation {name!r}; known relations: {', '.join(sorted(files))}")
    data = json.loads(files[key].read_text(encoding="utf-8"))
    samples = tuple((sample["subject"], sample["object"]) for sample in data["samples"])
    return Relation(key, files[key].parent.name, tuple(data["prompt_templates"]), samples)


def relation_prompts(n: int = 100, *, seed: int = 0, categories: tuple[str, ...] = ("factual", "commonsense", "linguistic")) -> list[str]:
    """``n`` distinct natural sentence prefixes: relation templates filled with their subjects.

    Relations take turns, so no large relation dominates. A built-in, offline stand-in for the Pile
    text the paper samples prompts from.
    """
    rng = random.Random(seed)
    relations = [relation for relation in map(load_relation, list_relations()) if relation.category in categories]
    queues = [rng.sample(relation.samples, len(relation.samples)) for relation in relations]
    prompts: dict[str, None] = {}
    for turn in range(max(map(len, queues))):
        for relation, queue in zip(relations, queues):
            if turn < len(queue) and len(prompts) < n:
                prompts[relation.prompt_templates[0].format(queue[turn][0])] = None
    if n < 1 or len(prompts) < n:
        raise ValueError(f"n must be between 1 and {len(prompts)}, got {n}")
    return list(prompts)
