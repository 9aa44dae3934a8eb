"""Self-contained HTML views of PatchScope results, for notebooks and files, with no network access.

circuitsvis' ``RenderedHTML`` probes the internet (1 s timeout) every time a notebook displays it, to
choose between its CDN page and its local bundle. We render with its local bundle only
(``circuitsvis.utils.render.render_local``), so pages work offline and display without a network call.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from circuitsvis.utils.render import render_local

from lens_pivotal.paths import atomic_write_text
from lens_pivotal.patchscope.decoding import TokenGrid


@dataclass
class HTMLView:
    """A self-contained HTML fragment: displays inline in Jupyter and saves as a standalone page."""

    body: str
    title: str = "lens_pivotal"

    def _repr_html_(self) -> str:
        return self.body

    def save(self, path: str | os.PathLike) -> Path:
        """Write a complete HTML page (all scripts inline) to ``path``, atomically."""
        page = f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title></head>\n<body>{self.body}</body></html>\n"
        atomic_write_text(path, page)
        return Path(path)


def token_grid_view(grid: TokenGrid, *, title: str = "PatchScope: top-1 decoded token per layer and position") -> HTMLView:
    """A layer × position table of decoded tokens shaded by probability, above a circuitsvis
    ``ColoredTokensMulti`` of the prompt (hover a token for its per-layer top-1 probability)."""
    return HTMLView(f"<h3>{html.escape(title)}</h3>\n{_grid_table(grid)}\n{_colored_prompt(grid)}", title)


def _grid_table(grid: TokenGrid) -> str:
    header = "".join(f"<th style='padding:2px 6px'>{_show(token)}</th>" for token in grid.tokens)
    rows = []
    for index, layer in enumerate(grid.layers):
        cells = []
        for token, prob in zip(grid.top_tokens[index], grid.probs[index].tolist()):
            shade = f"rgba(30, 100, 220, {0.1 + 0.8 * prob:.2f})"
            cells.append(f"<td title='p={prob:.3f}' style='background:{shade};padding:2px 6px'>{_show(token)}</td>")
        rows.append(f"<tr><th style='padding:2px 6px'>{layer}</th>{''.join(cells)}</tr>")
    return (
        "<table style='border-collapse:collapse;font-family:monospace;font-size:12px'>"
        f"<tr><th>layer \\ token</th>{header}</tr>{''.join(rows)}</table>"
    )


def _colored_prompt(grid: TokenGrid) -> str:
    values = grid.probs.T.to(torch.float32)
    labels = [f"layer {layer}" for layer in grid.layers]
    return render_local("ColoredTokensMulti", tokens=grid.tokens, values=values, labels=labels)


def _show(token: str) -> str:
    return html.escape(token.replace("\n", "\\n")) or "&nbsp;"
