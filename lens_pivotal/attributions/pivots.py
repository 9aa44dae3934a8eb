""""Why is this token pivotal?": for PTS rows, the probe's attribution and the pivot token's log-probability
attribution at the position that predicts the pivot, side by side."""

from __future__ import annotations

import os
from typing import Any, Iterable

from tqdm.auto import tqdm

from lens_pivotal.attributions.results import PivotExplanation
from lens_pivotal.attributions.token_attribution import Method, attribute_tokens
from lens_pivotal.probes.examples import probe_examples
from lens_pivotal.probes.layer_probes import LayerProbes
from lens_pivotal.pts.schema import PivotalToken, load_pts


def explain_pivots(
    model: Any,
    rows: Iterable[PivotalToken] | str | os.PathLike,
    probes: LayerProbes,
    *,
    n: int = 5,
    layer: int | None = None,
    method: Method = "integrated_gradients",
    progress: bool = True,
    **attribution_kwargs: Any,
) -> list[PivotExplanation]:
    """Attribute the probe and the pivot token for the first ``n`` rows that map onto the model's tokenization.

    Rows are tokenized as :func:`lens_pivotal.probe_examples` does (the same positions the probes were trained on);
    rows it cannot map are skipped. ``attribution_kwargs`` go to :func:`lens_pivotal.attribute_tokens` (``steps``,
    ``baseline``, ``batch_size``).
    """
    common = {"method": method, **attribution_kwargs}
    return [
        PivotExplanation(
            row,
            attribute_tokens(model, ids, target=probes, layer=layer, **common),
            attribute_tokens(model, ids, target=row.pivot_token_id, **common),
        )
        for row, ids in tqdm(pivot_contexts(model, rows, n), desc="explaining pivots", disable=not progress)
    ]


def pivot_contexts(
    model: Any, rows: Iterable[PivotalToken] | str | os.PathLike, n: int
) -> list[tuple[PivotalToken, list[int]]]:
    """The first ``n`` rows that map onto the model's tokenization, each with its token ids up to the one whose next
    token is the pivot (tokenized as :func:`lens_pivotal.probe_examples` does; rows it cannot map are skipped).

    Raises:
        ValueError: ``n`` is not a positive int, or no row maps.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rows = list(load_pts(rows) if isinstance(rows, (str, os.PathLike)) else rows)
    examples = probe_examples(model, rows, negatives_per_positive=0)
    chosen = [index for index, row in enumerate(examples.source_rows) if row is not None][:n]
    if not chosen:
        raise ValueError(f"none of the {len(rows)} rows maps onto {model.cfg.model_name}'s tokenization: {examples.mismatches[:3]}")
    ids = [examples.token_ids[examples.text_index[index]][: examples.positions[index] + 1] for index in chosen]
    return [(rows[examples.source_rows[index]], row_ids) for index, row_ids in zip(chosen, ids)]
