"""circuitsvis views of token and head attributions, self-contained and offline (see :mod:`lens_pivotal.viz.html`):
functions over the result classes of :mod:`~lens_pivotal.attributions.results`.

Attribution scores are signed: tokens are coloured on a diverging scale symmetric around 0 (blue pushes the target
up, red down); the token the target is read at is marked ``⟦…⟧``. Every integrated-gradients attribution shows its
completeness gap (``relative_delta``) beside it, in a warning style above ``LARGE_DELTA`` (5%).
"""

from __future__ import annotations

import html
from typing import Sequence

import circuitsvis.attention
import circuitsvis.tokens
import torch

from lens_pivotal.attributions.results import LARGE_DELTA, HeadAttribution, PivotExplanation, TokenAttribution
from lens_pivotal.viz.html import HTMLView, offline_html

POSITIVE, NEGATIVE = "#1f62d0", "#d0311f"
TABLE_STYLE = "border-collapse:collapse;font-family:monospace;font-size:12px"
BADGE_STYLE = "padding:1px 5px;border-radius:3px;font-family:monospace;font-size:12px"
GAP_STYLE = f"{BADGE_STYLE};background:#e6f4e3;color:#1d5e17"  # a completeness gap within LARGE_DELTA
LARGE_GAP_STYLE = f"{BADGE_STYLE};background:#fde2e0;color:#9b1c13;font-weight:bold"  # above it


def marked_tokens(tokens: Sequence[str], position: int) -> list[str]:
    """``tokens`` with the one at ``position`` marked ``⟦…⟧``."""
    return [f"⟦{token}⟧" if index == position else token for index, token in enumerate(tokens)]


def completeness_text(attribution: TokenAttribution) -> str:
    """``"completeness gap 2.3%"`` (``"⚠ completeness gap 12.0%"`` above LARGE_DELTA) for an integrated-gradients
    attribution; ``""`` for the other methods, which have no completeness to report."""
    gap = attribution.relative_delta
    if gap is None:
        return ""
    return f"{'⚠ ' if gap > LARGE_DELTA else ''}completeness gap {gap:.1%}"


def completeness_badge(attribution: TokenAttribution) -> str:
    """:func:`completeness_text` as an HTML badge, in a warning style above LARGE_DELTA (``""`` without a gap)."""
    text = completeness_text(attribution)
    if not text:
        return ""
    gap = attribution.relative_delta
    large = gap > LARGE_DELTA
    title = f"the scores' sum misses {gap:.1%} of target - baseline target"
    if large:
        title += f"; above {LARGE_DELTA:.0%}: raise steps or change the baseline before reading the scores"
    css_class, style = ("completeness-gap large", LARGE_GAP_STYLE) if large else ("completeness-gap", GAP_STYLE)
    return f"<span class='{css_class}' style='{style}' title='{html.escape(title)}'>{html.escape(text)}</span>"


def with_gap(label: str, attribution: TokenAttribution) -> str:
    """``label`` followed by the attribution's :func:`completeness_text` in parentheses, when it has one."""
    gap = completeness_text(attribution)
    return f"{label} ({gap})" if gap else label


def token_attribution_view(attribution: TokenAttribution, *, title: str | None = None) -> HTMLView:
    """One attribution: ``colored_tokens`` on a scale symmetric around 0, a summary line and the top tokens."""
    bound = max(float(attribution.scores.abs().max()), 1e-12)
    rendered = circuitsvis.tokens.colored_tokens(
        marked_tokens(attribution.tokens, attribution.position), attribution.scores.tolist(),
        min_value=-bound, max_value=bound, negative_color=NEGATIVE, positive_color=POSITIVE,
    )  # fmt: skip
    heading = title or f"{attribution.method}: {attribution.target_label} at position {attribution.position}"
    badge = completeness_badge(attribution)
    body = (
        f"<h3>{html.escape(heading)} {badge}</h3>\n{_summary(attribution)}\n{offline_html(rendered)}\n"
        f"{_top_table([attribution])}"
    )
    return HTMLView(body, heading)


def attributions_view(
    attributions: Sequence[TokenAttribution], labels: Sequence[str] | None = None, *, title: str | None = "Token attributions"
) -> HTMLView:
    """Several attributions of one text (methods or targets) side by side: ``colored_tokens_multi`` (choose one to
    colour by, hover a token for every value) and a table of each one's target, completeness and top tokens."""
    if not attributions:
        raise ValueError("attributions is empty: nothing to show")
    first = attributions[0]
    for index, other in enumerate(attributions[1:], start=1):
        if other.token_ids != first.token_ids:
            raise ValueError(f"attribution {index} is of another text than attribution 0: side by side needs one text")
    labels = list(labels) if labels is not None else [f"{item.method}: {item.target_label}" for item in attributions]
    if len(labels) != len(attributions):
        raise ValueError(f"{len(labels)} labels for {len(attributions)} attributions")
    values = torch.stack([_normalised(item.scores) for item in attributions], dim=1)
    menu = [with_gap(label, item) for label, item in zip(labels, attributions)]
    rendered = circuitsvis.tokens.colored_tokens_multi(marked_tokens(first.tokens, first.position), values, menu)
    note = "<p>each attribution scaled by its largest |score|; the table gives raw values</p>"
    heading = f"<h3>{html.escape(title)}</h3>\n" if title else ""
    body = f"{heading}{offline_html(rendered)}\n{note}\n{_top_table(attributions, labels)}"
    return HTMLView(body, title or "Token attributions")


def head_attribution_view(attribution: HeadAttribution, k: int = 6, *, title: str | None = None) -> HTMLView:
    """The top ``k`` heads: their attention patterns (circuitsvis ``attention_heads``), their contributions per source
    token (``colored_tokens_multi``), and a table of every part of the target."""
    top = attribution.top_heads(min(k, len(attribution.top_pattern_heads)))
    heading = title or f"Heads writing {attribution.target_label} at position {attribution.position}"
    parts = [f"<h3>{html.escape(heading)}</h3>", _parts_table(attribution)]
    if top:
        names = [f"L{block}H{head} ({value:+.3g})" for block, head, value in top]
        patterns = torch.stack([attribution.top_patterns[attribution.top_pattern_heads.index((b, h))] for b, h, _ in top])
        tokens = marked_tokens(attribution.tokens, attribution.position)
        per_source = torch.stack([_normalised(attribution.heads[block, head]) for block, head, _ in top], dim=1)
        parts.append("<h4>Contribution of each head from each source token (scaled per head)</h4>")
        parts.append(offline_html(circuitsvis.tokens.colored_tokens_multi(tokens, per_source, names)))
        parts.append("<h4>Attention patterns of those heads</h4>")
        parts.append(offline_html(circuitsvis.attention.attention_heads(patterns, tokens, attention_head_names=names)))
    return HTMLView("\n".join(parts), heading)


def pivots_view(explanations: Sequence[PivotExplanation], *, title: str = "Why is this token pivotal?") -> HTMLView:
    """One section per PTS row: the probe's and the pivot token's attributions as a circuitsvis
    ``colored_tokens_multi`` (switch between them), with ``prob_delta`` and each attribution's completeness."""
    sections = [f"<h2>{html.escape(title)}</h2>"]
    for explanation in explanations:
        row = explanation.row
        sections.append(
            f"<h3>pivot {html.escape(repr(row.pivot_token))}: P(success) {row.prob_before:.2f} → {row.prob_after:.2f} "
            f"(prob_delta {row.prob_delta:+.2f})</h3>"
        )
        labels = [f"probe: {explanation.probe.target_label}", f"pivot: {explanation.pivot.target_label}"]
        sections.append(attributions_view([explanation.probe, explanation.pivot], labels, title=None).body)
    return HTMLView("\n".join(sections), title)


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    return (scores / max(float(scores.abs().max()), 1e-12)).float()


def _summary(attribution: TokenAttribution) -> str:
    text = f"target value {attribution.target_value:+.4g}"
    if attribution.convergence_delta is not None:
        text += (
            f"; baseline ({html.escape(attribution.baseline)}) {attribution.baseline_value:+.4g}; sum of scores "
            f"{float(attribution.scores.sum()):+.4g}; convergence delta {attribution.convergence_delta:+.3g} "
            f"({attribution.steps} steps)"
        )
    if attribution.kept_positions:
        kept = ", ".join(html.escape(repr(attribution.tokens[index])) for index in attribution.kept_positions)
        text += f"<br>kept as they are in the baseline (scores 0 by construction): {kept}"
    return f"<p>{text}</p>"


def _top_table(attributions: Sequence[TokenAttribution], labels: Sequence[str] | None = None, k: int = 5) -> str:
    rows = []
    for index, item in enumerate(attributions):
        label = labels[index] if labels else f"{item.method}: {item.target_label}"
        top = ", ".join(f"{html.escape(repr(token))} {score:+.3g}" for _, token, score in item.top(k))
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td>{item.target_value:+.4g}</td><td>{_baseline_cell(item)}</td>"
            f"<td>{completeness_badge(item)}</td><td>{top}</td></tr>"
        )
    header = (
        "<tr><th>attribution</th><th>target value</th><th>baseline: target there (steps)</th>"
        "<th>completeness gap</th><th>top tokens</th></tr>"
    )
    return f"<table style='{TABLE_STYLE}' border='1' cellpadding='3'>{header}{''.join(rows)}</table>"


def _baseline_cell(attribution: TokenAttribution) -> str:
    if attribution.baseline_value is None:
        return ""
    return f"{html.escape(attribution.baseline)}: {attribution.baseline_value:+.4g} ({attribution.steps})"


def _parts_table(attribution: HeadAttribution) -> str:
    heads = attribution.head_totals
    parts = [
        ("embedding", attribution.embedding),
        ("attention heads (all)", float(heads.sum())),
        ("attention output bias", float(attribution.attention_bias.sum())),
        ("MLPs (all)", float(attribution.mlp.sum())),
        ("constant (bias of the target)", attribution.constant),
        ("sum of parts", attribution.total),
        ("target value", attribution.target_value),
    ]
    top = ", ".join(f"L{block}H{head} {value:+.3g}" for block, head, value in attribution.top_heads(5))
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{value:+.4g}</td></tr>" for name, value in parts)
    return f"<table style='{TABLE_STYLE}' border='1' cellpadding='3'>{rows}</table>\n<p>top heads: {top}</p>"
