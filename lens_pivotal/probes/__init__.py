"""Pivotal-token probes: examples from PTS rows, per-layer linear probes, scoring new text, views and plots.

    examples = lp.probe_examples(model, lp.load_pts("pts.jsonl"))
    acts = examples.cache(model)                                   # [n_layers, n_examples, d_model]
    baselines = lp.probes.example_baselines(model, examples, final_resid=acts[-1])
    probes = lp.train_probes(acts, examples.labels, groups=examples.groups, model=model, baselines=baselines)
    probes.save("probes/"); lp.probes.score_text(probes, model, "Some new text")
    cross_val_score(lp.probes.LinearProbe(l2=1e-2), acts[12].numpy(), examples.labels, groups=examples.groups)
    lp.probes.transfer_matrix(model, {"one": "a.jsonl", "two": "b.jsonl"})  # train on one family, score the other

Modules, in data-flow order: ``examples`` (PTS rows to labelled positions) and ``baselines``; ``config`` (settings
and what is saved), ``training`` (the batched solver), ``selection`` (splits, folds, the bootstrap, cross-validated
fits), ``metrics`` and ``calibration``; ``layer_probes`` (the estimator), ``estimator`` (one layer as a
scikit-learn classifier), ``evaluation`` (``train_probes``), ``controls``, ``direction``; ``scoring`` and ``scores``
(new text), ``views`` and ``plots``; ``workflow`` and ``transfer`` (whole runs).
"""

from lens_pivotal.probes.baselines import BASELINES, example_baselines
from lens_pivotal.probes.calibration import FalsePositiveRate
from lens_pivotal.probes.config import ADAM_PROBE_SETTINGS, ProbeConfig, ProbeSettings
from lens_pivotal.probes.direction import DeltaRegression, delta_regression, direction_probes, format_delta_table
from lens_pivotal.probes.estimator import LinearProbe
from lens_pivotal.probes.evaluation import evaluate_probes, gate_precision, train_probes
from lens_pivotal.probes.examples import ProbeExamples, probe_examples
from lens_pivotal.probes.layer_probes import LayerProbes
from lens_pivotal.probes.metrics import LayerMetrics, heldout_metrics
from lens_pivotal.probes.plots import plot_layer_metrics, plot_projection
from lens_pivotal.probes.scores import GeneratedScores, TokenScores
from lens_pivotal.probes.scoring import ProbeRecorder, generate_with_scores, recording, score_text
from lens_pivotal.probes.selection import group_folds, group_split
from lens_pivotal.probes.transfer import TransferResult, format_transfer_table, transfer_matrix
from lens_pivotal.probes.views import generated_view, token_scores_view
from lens_pivotal.probes.workflow import ProbeRun, format_baseline_table, format_layer_table, train_on_pts

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
    "ProbeRecorder",
    "ProbeRun",
    "ProbeSettings",
    "TokenScores",
    "TransferResult",
    "delta_regression",
    "direction_probes",
    "evaluate_probes",
    "example_baselines",
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
    "recording",
    "score_text",
    "token_scores_view",
    "train_on_pts",
    "train_probes",
    "transfer_matrix",
]
