"""PatchScope (Ghandeharioun et al., ICML 2024) as TransformerLens hook functions and experiments.

Hooks first (:func:`patch_hook`, :func:`layered_patch_hooks`), then one patchscope
(:class:`Patchscope`), next-token decoding against the logit and affine lenses
(:func:`next_token_decoding`), attribute extraction over the LRE relations
(:func:`attribute_extraction`) and entity description (:func:`entity_description`).
"""

from lens_pivotal.lenses import AffineMap
from lens_pivotal.patchscope.attributes import attribute_extraction, entity_description
from lens_pivotal.patchscope.core import IDENTITY_PROMPT, Patchscope, PatchscopeResult
from lens_pivotal.patchscope.decoding import (
    DecodingResult,
    TokenGrid,
    decode_positions,
    next_token_decoding,
    random_identity_prompts,
)
from lens_pivotal.patchscope.hooks import layered_patch_hooks, patch_hook
from lens_pivotal.patchscope.mappings import NormMatch
from lens_pivotal.patchscope.plots import plot_attribute_heatmap, plot_decoding
from lens_pivotal.patchscope.relations import Relation, list_relations, load_relation, relation_prompts
from lens_pivotal.patchscope.views import token_grid_view

__all__ = [
    "AffineMap",
    "DecodingResult",
    "IDENTITY_PROMPT",
    "NormMatch",
    "Patchscope",
    "PatchscopeResult",
    "Relation",
    "TokenGrid",
    "attribute_extraction",
    "decode_positions",
    "entity_description",
    "layered_patch_hooks",
    "list_relations",
    "load_relation",
    "next_token_decoding",
    "patch_hook",
    "plot_attribute_heatmap",
    "plot_decoding",
    "random_identity_prompts",
    "relation_prompts",
    "token_grid_view",
]
