"""circuitsvis views of probe scores (``colored_tokens`` / ``colored_tokens_multi``), self-contained and offline
(see :mod:`lens_pivotal.viz.html`)."""

from __future__ import annotations

import html

import circuitsvis.tokens

from lens_pivotal.probes.scores import GeneratedScores, TokenScores
from lens_pivotal.viz.html import HTMLView, offline_html


def token_scores_view(scores: TokenScores, *, title: str | None = None) -> HTMLView:
    """Tokens coloured by P(next token is pivotal): ``colored_tokens`` for one layer, ``colored_tokens_multi`` (hover
    a token for every layer's score) for several."""
    if len(scores.layers) == 1:
        rendered = circuitsvis.tokens.colored_tokens(scores.tokens, scores.scores[0].tolist(), min_value=0, max_value=1)
        caption = f"layer {scores.layer_labels[0]}"
    else:
        labels = [f"layer {label}" for label in scores.layer_labels]
        rendered = circuitsvis.tokens.colored_tokens_multi(scores.tokens, scores.scores.T.float(), labels)
        caption = f"{len(labels)} layers"
    heading = title or f"P(next token is pivotal), {caption}"
    return HTMLView(f"<h3>{html.escape(heading)}</h3>\n{offline_html(rendered)}", heading)


def generated_view(generated: GeneratedScores, *, title: str | None = None) -> HTMLView:
    """Generated tokens coloured by the score read just before each, with the flagged (likely pivotal) ones listed."""
    rendered = circuitsvis.tokens.colored_tokens(generated.tokens, generated.scores.tolist(), min_value=0, max_value=1)
    flagged = [html.escape(repr(token)) for token, _, flag in generated if flag]
    heading = title or f"Generated text, layer {generated.layer_label}: P(token is pivotal) before each token"
    summary = f"<p>flagged at ≥ {generated.threshold:g}: {', '.join(flagged) or 'none'}</p>"
    return HTMLView(f"<h3>{html.escape(heading)}</h3>\n{offline_html(rendered)}\n{summary}", heading)
