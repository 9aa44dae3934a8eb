"""lens_pivotal: a TransformerLens plugin for residual caching, pivotal-token probes, PatchScope and PTS.

Data flows ``model → cache → probes / patchscope → views``::

    import lens_pivotal as lp
    model = lp.load_model("Qwen/Qwen3-0.6B")              # a TransformerLens model
    acts = lp.cache_resid_post(model, texts, positions)  # [n_layers, n_rows, d_model]
    examples = lp.probe_examples(model, lp.load_pts("pts.jsonl"))
    probes = lp.train_probes(examples.cache(model), examples.labels, groups=examples.groups, model=model)
"""

from lens_pivotal.cache import cache_resid_post
from lens_pivotal.embedded import embedded_model
from lens_pivotal.lens import logit_lens
from lens_pivotal.model import UnsupportedArchitectureError, load_model, resid_post_hook
from lens_pivotal.patchscope import (
    IDENTITY_PROMPT,
    Patchscope,
    attribute_extraction,
    entity_description,
    next_token_decoding,
    patch_hook,
    patchscope,
)
from lens_pivotal.probes import LayerProbes, group_split, probe_examples, train_probes
from lens_pivotal.probes.scoring import generate_with_scores
from lens_pivotal.pts import load_pts, search_pivotal_tokens
from lens_pivotal.store import ResidStore

__all__ = [
    "IDENTITY_PROMPT",
    "LayerProbes",
    "Patchscope",
    "ResidStore",
    "attribute_extraction",
    "entity_description",
    "generate_with_scores",
    "group_split",
    "load_pts",
    "next_token_decoding",
    "patch_hook",
    "patchscope",
    "probe_examples",
    "search_pivotal_tokens",
    "train_probes",
    "UnsupportedArchitectureError",
    "cache_resid_post",
    "embedded_model",
    "load_model",
    "logit_lens",
    "resid_post_hook",
]
