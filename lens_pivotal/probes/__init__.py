"""Pivotal-token probes: examples from PTS rows, per-layer linear probes, scoring new text, views and plots.

    examples = lp.probe_examples(model, lp.load_pts("pts.jsonl"))
    acts = examples.cache(model)                                   # [n_layers, n_examples, d_model]
    probes = lp.train_probes(acts, examples.labels, groups=examples.groups, model=model)
    probes.save("probes/"); probes.score_text(model, "Some new text")
"""

from lens_pivotal.probes.examples import ProbeExamples, group_folds, group_split, probe_examples
from lens_pivotal.probes.layer_probes import SEED_A_SETTINGS, LayerProbes, ProbeConfig, ProbeSettings, train_probes
from lens_pivotal.probes.metrics import LayerMetrics, heldout_metrics

__all__ = [
    "LayerMetrics",
    "LayerProbes",
    "ProbeConfig",
    "ProbeExamples",
    "ProbeSettings",
    "SEED_A_SETTINGS",
    "group_folds",
    "group_split",
    "heldout_metrics",
    "probe_examples",
    "train_probes",
]
