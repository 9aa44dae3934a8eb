"""The whole probe workflow on a PTS dataset, writing every artefact to one folder: what ``lens-pivotal probe train``
and ``make demo`` run.

``PTS rows → probe examples → resid_post cache → all-layer probes → probes/ + metrics.json + plots + HTML views``
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from lens_pivotal._io import atomic_dir
from lens_pivotal.probes.baselines import example_baselines
from lens_pivotal.probes.calibration import FalsePositiveRate
from lens_pivotal.probes.config import ProbeSettings
from lens_pivotal.probes.direction import DeltaRegression, delta_regression, direction_probes, format_delta_table
from lens_pivotal.probes.examples import NegativeRecipe, ProbeExamples, probe_examples
from lens_pivotal.probes.evaluation import gate_precision, train_probes
from lens_pivotal.probes.layer_probes import LayerProbes
from lens_pivotal.probes.scoring import score_text
from lens_pivotal.probes.plots import plot_layer_metrics, plot_projection
from lens_pivotal.probes.views import token_scores_view
from lens_pivotal.pts.schema import PivotalToken
from lens_pivotal.viz import format_table, save_figure

GATE_RATES = (0.05, 0.1, 0.2)  # false-positive rates the demo's gate table sets thresholds by


@dataclass
class ProbeRun:
    """What :func:`train_on_pts` trained and measured: the pivotal-token probes, their examples, and what the stream
    knows of the pivot's direction (:mod:`lens_pivotal.probes.direction`; ``None`` where every pivot has one sign)."""

    probes: LayerProbes
    examples: ProbeExamples
    direction: LayerProbes | None
    delta_regression: DeltaRegression | None


def train_on_pts(
    model: Any,
    rows: Iterable[PivotalToken] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    model_source: str = "",
    negatives: NegativeRecipe = "matched",
    negatives_per_positive: float = 1.0,
    layers: Sequence[int] | None = None,
    embeddings: bool = False,
    batch_size: int = 16,
    settings: ProbeSettings | None = None,
    overwrite: bool = False,
) -> ProbeRun:
    """Train probes on PTS ``rows`` and write ``out/probes/``, ``metrics.json``, ``layer_metrics.png``,
    ``projection_best_layer.png`` and ``scores_best_layer.html`` / ``scores_all_layers.html`` (a held-out text);
    with pivots of both signs also the direction probes (``out/direction_probes/``) and the ``prob_delta``
    regression (in ``metrics.json``).

    ``out`` is written whole or not at all: an existing, non-empty ``out`` is refused before any work unless
    ``overwrite``, which replaces it (no file of an earlier run is left beside the new ones). ``settings`` (a
    :class:`~lens_pivotal.probes.ProbeSettings`) say how to train; its ``seed`` also seeds the negatives, drawn by
    the ``negatives`` recipe (:func:`~lens_pivotal.probes.probe_examples`).
    """
    settings = settings or ProbeSettings()
    with atomic_dir(out, overwrite=overwrite) as scratch:
        examples = probe_examples(
            model, rows, negatives=negatives, negatives_per_positive=negatives_per_positive, seed=settings.seed
        )
        acts = examples.cache(model, layers=layers, embeddings=embeddings, batch_size=batch_size, progress=False)
        baselines = example_baselines(model, examples, final_resid=last_block_rows(model, acts, layers), batch_size=batch_size)
        where = {"model": model, "layers": layers, "embeddings": embeddings, "settings": settings}
        probes = train_probes(
            acts, examples.labels, groups=examples.groups, baselines=baselines, control_types=examples.current_tokens,
            **where,
        )
        probes.config.model_source = model_source
        run = ProbeRun(probes, examples, None, None)
        if len({delta > 0 for delta in examples.prob_deltas if delta is not None}) == 2:
            run.direction = direction_probes(acts, examples, baselines=baselines, **where)
            run.direction.config.model_source = model_source
            run.delta_regression = delta_regression(acts, examples, baselines, settings=settings)
        _write_artefacts(model, run, acts, scratch)
    return run


def _write_artefacts(model: Any, run: ProbeRun, acts: Any, out: Path) -> None:
    probes, examples = run.probes, run.examples
    probes.save(out / "probes")
    record = metrics_record(probes, examples)
    if run.direction is not None:
        run.direction.save(out / "direction_probes")
        record |= {"direction": probe_results(run.direction), "prob_delta_regression": asdict(run.delta_regression)}
    (out / "metrics.json").write_text(json.dumps(record, indent=1))
    save_figure(plot_layer_metrics(probes), out / "layer_metrics.png")
    best = probes.slot(probes.best_layer)
    projection = plot_projection(
        acts[best], examples.labels, probes.predict_proba(acts)[best],
        title=f"PCA of layer {probes.layer_labels[best]} (best), all examples",
    )
    save_figure(projection, out / "projection_best_layer.png")
    text = heldout_text(probes, examples)
    token_scores_view(score_text(probes, model, text)).save(out / "scores_best_layer.html")
    token_scores_view(score_text(probes, model, text, layer="all")).save(out / "scores_all_layers.html")


def last_block_rows(model: Any, acts: Any, layers: Sequence[int] | None) -> Any:
    """The last block's rows of ``acts`` when it was cached (the baselines then read the model's output from that
    pass), else ``None``."""
    last = model.cfg.n_layers - 1
    blocks = list(range(model.cfg.n_layers)) if layers is None else [layer % model.cfg.n_layers for layer in layers]
    return acts[acts.shape[0] - len(blocks) + blocks.index(last)] if last in blocks else None


def heldout_text(probes: LayerProbes, examples: ProbeExamples) -> list[int]:
    """Token ids of the first held-out text that holds a pivotal position (to show scores on unseen data)."""
    heldout = set(probes.config.heldout_groups)
    for text, group, label in zip(examples.text_index, examples.groups, examples.labels):
        if group in heldout and label == 1:
            return examples.token_ids[text]
    return examples.token_ids[0]


def metrics_record(probes: LayerProbes, examples: ProbeExamples) -> dict[str, Any]:
    """JSON-ready summary: data counts, per-layer metrics with intervals, the control task, selectivity, the
    permutation p-values and the best layer."""
    return {
        "model_name": probes.config.model_name,
        "examples": {"total": len(examples), "pivotal": sum(examples.labels), "texts": len(examples.token_ids),
                     "groups": len(set(examples.groups)), "rows_not_mapped": examples.mismatches,
                     "negatives": examples.negatives, "answer_index_ks": examples.position_ks},
        **probe_results(probes),
    }


def probe_results(probes: LayerProbes) -> dict[str, Any]:
    """JSON-ready results of evaluated probes: split sizes, per-layer metrics, controls, baselines, best layer."""
    config = probes.config
    return {
        "n_train": config.n_train,
        "n_heldout": config.n_heldout,
        "layers": probes.layer_labels,
        "best_layer": probes.layer_labels[probes.slot(probes.best_layer)],
        "best_layer_chosen_by": "grouped cross-validation on the training problems" if config.cv_auroc else "held-out AUROC (optimistic)",
        "best_heldout_layer_optimistic": probes.layer_labels[probes.slot(probes.best_heldout_layer)],
        "cv_auroc": config.cv_auroc,
        "metrics": config.metrics,
        "control_task_auroc": config.control_task_auroc,
        "selectivity": None if config.control_task_auroc is None else probes.selectivity.tolist(),
        "permutation_p": config.permutation_p,
        "l2": config.l2,
        "baselines": config.baseline_metrics,
        "versus_best_baseline": config.versus_best_baseline,
        "probe_plus_uncertainty": config.with_uncertainty,
    }


def format_layer_table(probes: LayerProbes) -> str:
    """A fixed-width table, one row per layer: held-out AUROC with its interval, the grouped cross-validated AUROC
    on the training problems (which picks the best layer), AUPRC, the control task's AUROC, selectivity (AUROC minus
    the control task's), the permutation p-value and the L2 used; with baselines, the paired differences against the
    best baseline and of probe + uncertainty (entropy, top-1 probability) against the uncertainty alone. Preceded by
    the baseline table when there are baselines."""
    result, config = probes.metrics, probes.config
    missing = [float("nan")] * probes.n_layers
    cv_auroc, control, p_values = (values or missing for values in (config.cv_auroc, config.control_task_auroc, config.permutation_p))
    selectivity = probes.selectivity.tolist() if config.control_task_auroc else missing
    rows = []
    for index, label in enumerate(probes.layer_labels):
        numbers = (cv_auroc[index], float(result.values["auprc"][index]), control[index], selectivity[index], p_values[index])
        rows.append([
            label, _with_interval(float(result.values["auroc"][index]), result.low["auroc"][index], result.high["auroc"][index]),
            *(f"{number:.3f}" for number in numbers), f"{config.l2[index]:.0e}",
        ])  # fmt: skip
    header = ["layer", "AUROC [95% CI]", "CV AUROC", "AUPRC", "control task", "select.", "perm. p", "l2"]
    versus, with_uncertainty = probes.versus_best_baseline, probes.with_uncertainty
    if versus is not None:
        header.append(f"AUROC - {versus['baseline']} [95% CI]")
        for index, row in enumerate(rows):
            row.append(_with_interval(versus["value"][index], versus["low"][index], versus["high"][index], signed=True))
    if with_uncertainty is not None:
        features = "+".join(with_uncertainty["features"])
        header.append(f"(probe+{features}) - ({features}) [95% CI]")
        gain = with_uncertainty["minus_uncertainty"]
        for index, row in enumerate(rows):
            row.append(_with_interval(gain["value"][index], gain["low"][index], gain["high"][index], signed=True))
    notes = [_layer_note(probes, index) for index in range(len(rows))]
    table = format_table(header, rows, align="lr" + "r" * (len(header) - 2), notes=notes)
    caption = (
        "Probes per layer, on the held-out problems. The best layer is chosen by grouped cross-validation on the "
        "training problems (CV AUROC), so its held-out numbers are unbiased; the layer with the best held-out AUROC "
        "is marked optimistic. Control task: a probe trained on random labels of the current token's type (Hewitt & "
        "Liang); select. = AUROC minus it; perm. p: the AUROC's p-value against probes trained on permuted labels."
    )
    table = f"{caption}\n{table}"
    return f"{format_baseline_table(probes)}\n\n{table}" if probes.baseline_metrics else table


def _with_interval(value: float, low: float, high: float, *, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value:{sign}.3f} [{float(low):{sign}.2f}, {float(high):{sign}.2f}]"


def _layer_note(probes: LayerProbes, slot: int) -> str:
    if slot == probes.slot(probes.best_layer):
        return "<- best (CV)" if probes.config.cv_auroc is not None else "<- best (held-out, optimistic)"
    return "<- best held-out (optimistic)" if slot == probes.slot(probes.best_heldout_layer) else ""


def format_baseline_table(probes: LayerProbes) -> str:
    """The baselines' held-out AUROC (with intervals), AUPRC, balanced accuracy and F1, on the probes' held-out rows."""
    rows = []
    for name, value in probes.baseline_metrics.items():
        auroc = _with_interval(value["auroc"], value["auroc_low"], value["auroc_high"])
        rows.append([name, auroc, *(f"{value[metric]:.3f}" for metric in ("auprc", "balanced_accuracy", "f1"))])
    caption = "Baselines (no probe), fitted and oriented on the training problems, scored on the same held-out rows:"
    return f"{caption}\n" + format_table(["baseline", "AUROC [95% CI]", "AUPRC", "bal.acc", "F1"], rows, align="lrrrr")


def probe_demo(model: Any, out: str | os.PathLike, *, model_source: str = "embedded") -> str:
    """``make demo``'s probe part: train on the shipped PTS dataset, write everything under ``out``, return the
    print-ready summary, the layer table and what the stream knows of the pivot's direction."""
    from lens_pivotal.pts.schema import load_shipped_pts

    run = train_on_pts(model, load_shipped_pts(), out, model_source=model_source)
    return f"{format_run(run)}\n\n{format_gate_table(run, model)}"


def format_gate_table(run: ProbeRun, model: Any, rates: Sequence[float] = GATE_RATES) -> str:
    """The best layer's probe as a gate, at 0.5 and at thresholds set by false-positive rates on the held-out
    negatives: on those rows (false-positive rate, recall) and on every answer state of the held-out texts (how often
    it fires, precision, recall; :func:`~lens_pivotal.probes.evaluation.gate_precision`)."""
    probes = run.probes
    thresholds = [0.5, *(FalsePositiveRate(rate) for rate in rates)]
    on_texts = gate_precision(probes, model, run.examples, thresholds)
    rows = []
    for threshold, texts in zip(thresholds, on_texts):
        point = probes.operating_point(threshold)
        name = "0.5" if threshold == 0.5 else f"FPR {threshold.rate:g}"
        rows.append([name, f"{point['threshold']:.3f}", f"{point['fpr']:.2f}", f"{point['recall']:.2f}",
                     f"{texts['fired']:.2f}", f"{texts['precision']:.2f}", f"{texts['recall']:.2f}"])  # fmt: skip
    share = on_texts[0]["pivotal_share"]
    caption = (
        f"The block-{probes.layer_labels[probes.slot(probes.best_layer)]} probe as a gate. Held-out rows: its false-"
        f"positive rate and recall; held-out texts: every answer state scored ({share:.1%} of them pivotal), how "
        "often the gate fires and its precision and recall there."
    )
    header = ["threshold", "score", "FPR (rows)", "recall (rows)", "fires (texts)", "precision (texts)", "recall (texts)"]
    return f"{caption}\n{format_table(header, rows, align='lrrrrrr')}"


def format_run(run: ProbeRun) -> str:
    """The examples, the pivotal-token layer table and, when trained, the direction probes and the ``prob_delta``
    regression, as printed by ``make demo`` and ``probe train``."""
    config = run.probes.config
    parts = [
        f"{run.examples}\ntrained on {config.n_train} rows, evaluated on {config.n_heldout} held-out rows "
        f"({len(config.heldout_groups)} problems)", format_layer_table(run.probes),
    ]  # fmt: skip
    if run.direction is not None:
        parts += [
            "Which way does the pivot go? Probes of the sign of prob_delta (1: the pivot raises P(success)), on the "
            f"pivotal rows only\n{format_layer_table(run.direction)}",
            format_delta_table(run.delta_regression, run.probes.layer_labels),
        ]
    return "\n\n".join(parts)
