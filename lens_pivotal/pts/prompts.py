"""How a question becomes the token prompt the model answers: the chat template for instruct models, or plain text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PromptFormat:
    """The prompt around each question.

    Attributes:
        template: the user message; ``{question}`` is replaced by the question.
        system: an optional system message (chat template only).
        examples: worked ``(question, answer)`` pairs shown before the question as earlier chat turns (or as
            ``question\\nanswer`` paragraphs without a chat template); they fix the answer's format.
        chat_template: ``None`` uses the tokenizer's chat template when it has one; ``True`` requires it;
            ``False`` sends plain text.
    """

    template: str = "{question}"
    system: str | None = None
    examples: tuple[tuple[str, str], ...] = ()
    chat_template: bool | None = None

    def __post_init__(self) -> None:
        if "{question}" not in self.template:
            raise ValueError(f"PromptFormat.template must contain '{{question}}', got {self.template!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (recorded with the search output)."""
        return {"template": self.template, "system": self.system, "examples": [list(pair) for pair in self.examples],
                "chat_template": self.chat_template}

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> PromptFormat:
        """The inverse of :meth:`to_dict` (e.g. to rebuild the prompt recorded in a ``.progress.jsonl``)."""
        return cls(**(settings | {"examples": tuple(tuple(pair) for pair in settings["examples"])}))


def _uses_chat_template(tokenizer: Any, prompt: PromptFormat) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt.chat_template and not has_template:
        raise ValueError("PromptFormat(chat_template=True) but the tokenizer has no chat template")
    return has_template if prompt.chat_template is None else prompt.chat_template


def _messages(question: str, prompt: PromptFormat) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    for example_question, example_answer in prompt.examples:
        messages.append({"role": "user", "content": prompt.template.format(question=example_question)})
        messages.append({"role": "assistant", "content": example_answer})
    messages.append({"role": "user", "content": prompt.template.format(question=question)})
    return messages


def prompt_token_ids(tokenizer: Any, question: str, prompt: PromptFormat) -> list[int]:
    """The prompt's token ids; decoding them (special tokens kept) gives back the prompt text."""
    if _uses_chat_template(tokenizer, prompt):
        text = tokenizer.apply_chat_template(_messages(question, prompt), add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    shots = "".join(f"{prompt.template.format(question=q)}\n{a}\n\n" for q, a in prompt.examples)
    return tokenizer(shots + prompt.template.format(question=question))["input_ids"]


ARITHMETIC_ONE_SHOT = PromptFormat(
    examples=(("Lily has 12 shells. Lily finds 7 more shells. How many shells does Lily have now?",
               "12 + 7 = 19. The answer is 19."),),
)
"""One worked example that makes small instruct models answer briefly: the calculation, then "The answer is N."."""

MULTISTEP_FEW_SHOT = PromptFormat(
    examples=(
        ("Lily has 12 shells. Lily gives away 5 shells. Lily finds 7 more shells. How many shells does Lily have now?",
         "12 - 5 = 7. 7 + 7 = 14. The answer is 14."),
        ("Tom has 4 coins. Tom buys 3 more coins. A friend gives Tom 2 more coins. How many coins does Tom have now?",
         "4 + 3 = 7. 7 + 2 = 9. The answer is 9."),
        ("Sara has 15 books. Sara sells 6 books. Sara loses 2 books. How many books does Sara have now?",
         "15 - 6 = 9. 9 - 2 = 7. The answer is 7."),
        ("Ravi has 8 pencils. Ravi finds 5 more pencils. Ravi gives away 4 pencils. How many pencils does Ravi have now?",
         "8 + 5 = 13. 13 - 4 = 9. The answer is 9."),
    ),
)  # fmt: skip
"""Four worked two-step examples, one per order of ``+`` and ``-``, each intermediate result written out. With one
example, SmolLM2-135M copies its operators whatever the question says."""

PROMPT_PRESETS: dict[str, PromptFormat] = {
    "plain": PromptFormat(), "arithmetic-one-shot": ARITHMETIC_ONE_SHOT, "multistep-few-shot": MULTISTEP_FEW_SHOT
}
"""Named prompt formats (the CLI's ``--prompt``)."""
