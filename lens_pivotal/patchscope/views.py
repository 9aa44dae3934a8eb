"""Self-contained, offline HTML views of PatchScope results (see :mod:`lens_pivotal.viz.html`)."""

from __future__ import annotations

import html

import circuitsvis.tokens
import torch

from lens_pivotal.patchscope.decoding import TokenGrid
from lens_pivotal.viz.html import HTMLView, offline_html


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
    return offline_html(circuitsvis.tokens.colored_tokens_multi(grid.tokens, values, labels))


def _show(token: str) -> str:
    return html.escape(token.replace("\n", "\\n")) or "&nbsp;"
