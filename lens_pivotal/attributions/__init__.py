"""Token attributions: which input tokens (and which heads, from which source tokens) drive a probe's score or a
token's probability, with captum and TransformerLens' ``ActivationCache`` helpers, shown as circuitsvis views.

- :func:`attribute_tokens`: integrated gradients, input × gradient or occlusion on the token embeddings;
- :func:`head_attributions`: the direct contribution of every head (by source token), MLP and the embedding to a
  linear target;
- :func:`explain_pivots`: both, for PTS rows ("why is this token pivotal?").

They return the dataclasses of :mod:`~lens_pivotal.attributions.results`; :func:`token_attribution_view`,
:func:`head_attribution_view`, :func:`attributions_view` and :func:`pivots_view` show them.
"""

from lens_pivotal.attributions.heads import head_attributions
from lens_pivotal.attributions.pivots import explain_pivots
from lens_pivotal.attributions.plots import plot_head_attributions, plot_token_attributions
from lens_pivotal.attributions.results import HeadAttribution, PivotExplanation, TokenAttribution
from lens_pivotal.attributions.token_attribution import attribute_tokens, compare_methods
from lens_pivotal.attributions.views import attributions_view, head_attribution_view, pivots_view, token_attribution_view

__all__ = [
    "HeadAttribution",
    "PivotExplanation",
    "TokenAttribution",
    "attribute_tokens",
    "attributions_view",
    "compare_methods",
    "explain_pivots",
    "head_attribution_view",
    "head_attributions",
    "pivots_view",
    "plot_head_attributions",
    "plot_token_attributions",
    "token_attribution_view",
]
