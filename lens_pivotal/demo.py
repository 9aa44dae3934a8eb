"""The demo behind ``make demo``: what the embedded model's residual stream says, layer by layer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal._io import atomic_write_text
from lens_pivotal.lenses import logit_lens
from lens_pivotal.resid.cache import cache_resid_post
from lens_pivotal.viz.tables import format_table

DEMO_PROMPTS = (
    "The capital of France is",
    "The opposite of hot is",
    "One, two, three,",
    "The Eiffel Tower is in the city of",
)


def logit_lens_table(
    model: TransformerBridge, prompts: list[str], *, batch_size: int = 8
) -> list[list[tuple[str, float]]]:
    """For each layer, for each prompt: the logit lens' top token at the last position and its probability."""
    resid = cache_resid_post(model, prompts, [-1] * len(prompts), batch_size=batch_size, progress=False)
    probs = torch.softmax(logit_lens(model, resid).float(), dim=-1)
    top_prob, top_id = probs.max(dim=-1)
    return [
        [(model.to_string(top_id[layer, row : row + 1]), top_prob[layer, row].item()) for row in range(len(prompts))]
        for layer in range(resid.shape[0])
    ]


def format_logit_lens_table(prompts: list[str], table: list[list[tuple[str, float]]], width: int = 18) -> str:
    """One row per layer, one column per prompt (the prompts listed above it); long cells are cut to ``width``."""
    def cell(text: str) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    legend = [f"[{number}] {prompt!r}" for number, prompt in enumerate(prompts, start=1)]
    rows = [[str(layer), *(cell(f"{token!r} {prob:.2f}") for token, prob in row)] for layer, row in enumerate(table)]
    header = ["layer", *(f"[{number}]" for number in range(1, len(prompts) + 1))]
    return format_table(header, rows, align="r" + "l" * len(prompts), above=legend)


def run_demo(model: TransformerBridge, out: str | os.PathLike, prompts: list[str] | None = None) -> str:
    """Print-ready logit-lens table for ``prompts``; also writes it as text and JSON under ``out``."""
    prompts = list(prompts or DEMO_PROMPTS)
    table = logit_lens_table(model, prompts)
    text = format_logit_lens_table(prompts, table)
    out = Path(out)
    atomic_write_text(out / "logit_lens.txt", text + "\n")
    records = [
        {"layer": layer, "prompt": prompt, "top_token": token, "prob": prob}
        for layer, row in enumerate(table)
        for prompt, (token, prob) in zip(prompts, row)
    ]
    atomic_write_text(out / "logit_lens.json", json.dumps(records, indent=1))
    return text
