"""Token attributions: which input tokens (and which heads, from which source tokens) drive a probe's score or a
token's probability, with captum and TransformerLens' ``ActivationCache`` helpers, shown as circuitsvis views.

- :func:`attribute_tokens`: integrated gradients, input × gradient or occlusion on the token embeddings;
- :func:`head_attributions`: the direct contribution of every head (by source token), MLP and the embedding to a
  linear target;
- :func:`explain_pivots`: both, for PTS rows ("why is this token pivotal?"); ``views`` shows them.
"""

from lens_pivotal.attributions.heads import HeadAttribution, head_attributions
from lens_pivotal.attributions.plots import plot_head_attributions, plot_token_attributions
from lens_pivotal.attributions.pivots import PivotExplanation, explain_pivots, pivots_view
from lens_pivotal.attributions.token_attribution import TokenAttribution, attribute_tokens, compare_methods
from lens_pivotal.attributions.views import attributions_view

__all__ = [
    "HeadAttribution",
    "PivotExplanation",
    "TokenAttribution",
    "attribute_tokens",
    "attributions_view",
    "compare_methods",
    "explain_pivots",
    "head_attributions",
    "pivots_view",
    "plot_head_attributions",
    "plot_token_attributions",
]
