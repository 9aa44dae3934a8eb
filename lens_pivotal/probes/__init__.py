"""Pivotal-token probes: examples from PTS rows, per-layer linear probes, scoring new text, views and plots.

    examples = lp.probe_examples(model, lp.load_pts("pts.jsonl"))
    acts = examples.cache(model)                                   # [n_layers, n_examples, d_model]
    probes = lp.train_probes(acts, examples.labels, groups=examples.groups, model=model)
    probes.save("probes/"); probes.score_text(model, "Some new text")
    cross_val_score(lp.probes.LinearProbe(l2=1e-2), acts[12].numpy(), examples.labels, groups=examples.groups)
    lp.probes.transfer_matrix(model, {"one": "a.jsonl", "two": "b.jsonl"})  # train on one family, score the other
"""

from lens_pivotal.probes.calibration import FalsePositiveRate, gate_precision
from lens_pivotal.probes.estimator import LinearProbe
from lens_pivotal.probes.examples import ProbeExamples, group_folds, group_split, probe_examples
from lens_pivotal.probes.layer_probes import (
    ADAM_PROBE_SETTINGS,
    LayerProbes,
    ProbeConfig,
    ProbeSettings,
    evaluate_probes,
    train_probes,
)
from lens_pivotal.probes.metrics import LayerMetrics, heldout_metrics
from lens_pivotal.probes.plots import plot_layer_metrics, plot_projection
from lens_pivotal.probes.scoring import GeneratedScores, TokenScores, generate_with_scores
from lens_pivotal.probes.views import generated_view, token_scores_view
from lens_pivotal.probes.baselines import BASELINES
from lens_pivotal.probes.workflow import ProbeRun, format_baseline_table, format_layer_table, train_on_pts
from lens_pivotal.probes.direction import DeltaRegression, delta_regression, direction_probes, format_delta_table
from lens_pivotal.probes.transfer import TransferResult, format_transfer_table, transfer_matrix

__all__ = [
    "ADAM_PROBE_SETTINGS",
    "BASELINES",
    "DeltaRegression",
    "FalsePositiveRate",
    "GeneratedScores",
    "LayerMetrics",
    "LayerProbes",
    "LinearProbe",
    "ProbeConfig",
    "ProbeExamples",
    "ProbeRun",
    "ProbeSettings",
    "TokenScores",
    "TransferResult",
    "delta_regression",
    "direction_probes",
    "evaluate_probes",
    "format_baseline_table",
    "format_delta_table",
    "format_layer_table",
    "format_transfer_table",
    "gate_precision",
    "generate_with_scores",
    "generated_view",
    "group_folds",
    "group_split",
    "heldout_metrics",
    "plot_layer_metrics",
    "plot_projection",
    "probe_examples",
    "token_scores_view",
    "train_on_pts",
    "train_probes",
    "transfer_matrix",
]
