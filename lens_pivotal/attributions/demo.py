"""The attribution part of ``make demo``: why the trained probe fires at one held-out pivot, as an HTML page."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from lens_pivotal.attributions.pivots import explain_pivots
from lens_pivotal.attributions.token_attribution import DEFAULT_STEPS
from lens_pivotal.attributions.views import completeness_text, pivots_view
from lens_pivotal.probes.layer_probes import LayerProbes
from lens_pivotal.pts.problems import group_name
from lens_pivotal.pts.schema import PivotalToken, load_shipped_pts


def attribution_demo(
    model: Any, probes_dir: str | os.PathLike, out_dir: str | os.PathLike, *, steps: int = DEFAULT_STEPS
) -> str:
    """Attribute the best layer's probe logit and the pivot token's log-probability at the first held-out positive
    pivot of the shipped PTS data (integrated gradients from the default ``"pad"`` baseline); write
    ``why_pivotal.html`` under ``out_dir`` and return a printable summary with each attribution's completeness gap."""
    probes = LayerProbes.load(probes_dir, model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the summary and the page report each attribution's completeness
        [explanation] = explain_pivots(model, heldout_pivots(probes), probes, n=1, steps=steps, progress=False)
    pivots_view([explanation]).save(Path(out_dir) / "why_pivotal.html")
    row = explanation.row
    lines = [f"Held-out pivot {row.pivot_token!r} (P(success) {row.prob_before:.2f} -> {row.prob_after:.2f}), "
             f"integrated gradients, {steps} steps, {explanation.pivot.baseline!r} baseline:"]  # fmt: skip
    for attribution in (explanation.probe, explanation.pivot):
        top = ", ".join(f"{token!r} {score:+.2f}" for _, token, score in attribution.top(4))
        lines.append(
            f"  {attribution.target_label} = {attribution.target_value:+.3f} (baseline "
            f"{attribution.baseline_value:+.3f}); {completeness_text(attribution)}; top tokens: {top}"
        )
    return "\n".join(lines)


def heldout_pivots(probes: LayerProbes) -> list[PivotalToken]:
    """The shipped PTS data's positive rows of the probes' held-out groups; the demo explains the first that maps."""
    heldout = set(probes.config.heldout_groups)
    return [row for row in load_shipped_pts() if group_name(row.group_key) in heldout and row.is_positive]
