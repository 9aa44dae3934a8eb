"""lens_pivotal: a TransformerLens plugin for residual caching, pivotal-token probes, PatchScope and PTS.

Data flows ``model → resid → probes / patchscope / attributions / steering → views``. A ``layer`` is always a block
number (TransformerLens' ``blocks.{layer}``, its ``hook_resid_post``) or a hook name (``EMBEDDING_HOOK``)::

    import lens_pivotal as lp
    model = lp.load_model("Qwen/Qwen3-0.6B")              # a TransformerLens model
    acts = lp.cache_resid_post(model, texts, positions)  # [n_layers, n_rows, d_model]
    examples = lp.probe_examples(model, lp.load_pts("pts.jsonl"))
    probes = lp.train_probes(examples.cache(model), examples.labels, groups=examples.groups, model=model)
    lp.attributions.token_attribution_view(lp.attribute_tokens(model, text, target=probes, layer=probes.best_layer))
    hook = lp.steering_hook(lp.steering_vectors(acts, examples, model=model), 4.0, layer=12, gate=(probes, 0.5))
"""

from lens_pivotal import attributions, patchscope, probes, pts, resid, steering, tokens, viz
from lens_pivotal.attributions import HeadAttribution, TokenAttribution, attribute_tokens, head_attributions
from lens_pivotal.embedded import embedded_model
from lens_pivotal.kv_cache import KVCacheError
from lens_pivotal.lenses import AffineMap, logit_lens
from lens_pivotal.model import EMBEDDING_HOOK, Layer, UnsupportedArchitectureError, load_model, resid_post_hook
from lens_pivotal.patchscope import (
    IDENTITY_PROMPT,
    Patchscope,
    attribute_extraction,
    entity_description,
    next_token_decoding,
    patch_hook,
)
from lens_pivotal.probes import LayerProbes, ProbeSettings, generate_with_scores, group_split, probe_examples, train_probes
from lens_pivotal.pts import load_pts, search_pivotal_tokens
from lens_pivotal.resid import ResidStore, cache_resid_post
from lens_pivotal.steering import SteeringVectors, evaluate_steering, steering_hook, steering_vectors
from lens_pivotal.viz import save_figure

__all__ = [
    "AffineMap",
    "EMBEDDING_HOOK",
    "HeadAttribution",
    "IDENTITY_PROMPT",
    "KVCacheError",
    "Layer",
    "LayerProbes",
    "Patchscope",
    "ProbeSettings",
    "ResidStore",
    "SteeringVectors",
    "TokenAttribution",
    "UnsupportedArchitectureError",
    "attribute_extraction",
    "attribute_tokens",
    "attributions",
    "cache_resid_post",
    "embedded_model",
    "entity_description",
    "evaluate_steering",
    "generate_with_scores",
    "group_split",
    "head_attributions",
    "load_model",
    "load_pts",
    "logit_lens",
    "next_token_decoding",
    "patch_hook",
    "patchscope",
    "probe_examples",
    "probes",
    "pts",
    "resid",
    "resid_post_hook",
    "save_figure",
    "search_pivotal_tokens",
    "steering",
    "steering_hook",
    "steering_vectors",
    "tokens",
    "train_probes",
    "viz",
]
