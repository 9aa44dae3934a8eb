"""The PatchScope part of ``make demo``: the next-token decoding curve of a model, as a PNG and a table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal._io import atomic_write_text
from lens_pivotal.patchscope.decoding import DecodingResult, next_token_decoding
from lens_pivotal.patchscope.plots import plot_decoding
from lens_pivotal.patchscope.relations import relation_prompts
from lens_pivotal.viz import save_figure


def save_decoding(result: DecodingResult, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``decoding.json`` and the ``decoding.png`` curves under ``out_dir``; returns both paths."""
    out = Path(out_dir)
    json_path = out / "decoding.json"
    atomic_write_text(json_path, json.dumps(result.to_dict(), indent=1))
    return json_path, save_figure(plot_decoding(result), out / "decoding.png")


def decoding_demo(model: TransformerBridge, out_dir: str | os.PathLike, *, n_prompts: int = 40, batch_size: int = 128) -> str:
    """Next-token decoding of ``n_prompts`` built-in prompts at every layer; writes the curve under
    ``out_dir`` and returns a printable per-layer table (P@1 and surprisal, PatchScope vs baselines)."""
    result = next_token_decoding(model, relation_prompts(n_prompts), batch_size=batch_size, progress=False)
    _, png = save_decoding(result, out_dir)
    header = (
        f"PatchScope next-token decoding of {model.cfg.model_name}: {len(result.prompts)} held-out prompts "
        f"(the affine lens was fitted on {len(result.train_prompts)} others and {len(result.affine_texts)} more "
        f"relation prompts); curve in {png.name}"
    )
    return f"{header}\n{result.table()}"
