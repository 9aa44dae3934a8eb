"""The whole probe workflow on a PTS dataset, writing every artefact to one folder: what ``lens-pivotal probe train``
and ``make demo`` run.

``PTS rows → probe examples → resid_post cache → all-layer probes → probes/ + metrics.json + plots + HTML views``
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from lens_pivotal._io import atomic_dir
from lens_pivotal.probes.examples import ProbeExamples, probe_examples
from lens_pivotal.probes.layer_probes import LayerProbes, ProbeSettings, train_probes
from lens_pivotal.probes.plots import plot_layer_metrics, plot_projection
from lens_pivotal.probes.views import token_scores_view
from lens_pivotal.pts.schema import PivotalToken
from lens_pivotal.viz import format_table, save_figure


def train_on_pts(
    model: Any,
    rows: Iterable[PivotalToken] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    model_source: str = "",
    negatives_per_positive: float = 1.0,
    layers: Sequence[int] | None = None,
    embeddings: bool = False,
    batch_size: int = 16,
    settings: ProbeSettings | None = None,
    overwrite: bool = False,
) -> tuple[LayerProbes, ProbeExamples]:
    """Train probes on PTS ``rows`` and write ``out/probes/``, ``metrics.json``, ``layer_metrics.png``,
    ``projection_best_layer.png`` and ``scores_best_layer.html`` / ``scores_all_layers.html`` (a held-out text).

    ``out`` is written whole or not at all: an existing, non-empty ``out`` is refused before any work unless
    ``overwrite``, which replaces it (no file of an earlier run is left beside the new ones). ``settings`` (a
    :class:`~lens_pivotal.probes.ProbeSettings`) say how to train; its ``seed`` also seeds the negatives.
    """
    settings = settings or ProbeSettings()
    with atomic_dir(out, overwrite=overwrite) as scratch:
        examples = probe_examples(model, rows, negatives_per_positive=negatives_per_positive, seed=settings.seed)
        acts = examples.cache(model, layers=layers, embeddings=embeddings, batch_size=batch_size, progress=False)
        baselines = examples.baselines(model, final_resid=last_block_rows(model, acts, layers), batch_size=batch_size)
        probes = train_probes(
            acts, examples.labels, groups=examples.groups, model=model, layers=layers, embeddings=embeddings,
            settings=settings, baselines=baselines, control_types=examples.current_tokens,
        )
        probes.config.model_source = model_source
        _write_artefacts(model, probes, examples, acts, scratch)
    return probes, examples


def _write_artefacts(model: Any, probes: LayerProbes, examples: ProbeExamples, acts: Any, out: Path) -> None:
    probes.save(out / "probes")
    (out / "metrics.json").write_text(json.dumps(metrics_record(probes, examples), indent=1))
    save_figure(plot_layer_metrics(probes), out / "layer_metrics.png")
    best = probes.slot(probes.best_layer)
    projection = plot_projection(
        acts[best], examples.labels, probes.predict_proba(acts)[best],
        title=f"PCA of layer {probes.layer_labels[best]} (best), all examples",
    )
    save_figure(projection, out / "projection_best_layer.png")
    text = heldout_text(probes, examples)
    token_scores_view(probes.score_text(model, text)).save(out / "scores_best_layer.html")
    token_scores_view(probes.score_text(model, text, layer="all")).save(out / "scores_all_layers.html")


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
    config = probes.config
    return {
        "model_name": config.model_name,
        "examples": {"total": len(examples), "pivotal": sum(examples.labels), "texts": len(examples.token_ids),
                     "groups": len(set(examples.groups)), "rows_not_mapped": examples.mismatches},
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
        "probe_plus_entropy": config.with_entropy,
    }


def format_layer_table(probes: LayerProbes) -> str:
    """A fixed-width table, one row per layer: held-out AUROC with its interval, the grouped cross-validated AUROC
    on the training problems (which picks the best layer), AUPRC, the control task's AUROC, selectivity (AUROC minus
    the control task's), the permutation p-value and the L2 used; with baselines, the paired differences against the
    best baseline and of
    probe + entropy against entropy alone. Preceded by the baseline table when there are baselines."""
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
    versus, with_entropy = probes.versus_best_baseline, probes.with_entropy
    if versus is not None:
        header.append(f"AUROC - {versus['baseline']} [95% CI]")
        for index, row in enumerate(rows):
            row.append(_with_interval(versus["value"][index], versus["low"][index], versus["high"][index], signed=True))
    if with_entropy is not None:
        header.append("(probe+entropy) - entropy [95% CI]")
        gain = with_entropy["minus_entropy"]
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
    print-ready summary and layer table."""
    from lens_pivotal.pts.schema import load_shipped_pts

    probes, examples = train_on_pts(model, load_shipped_pts(), out, model_source=model_source)
    config = probes.config
    return (
        f"{examples}\ntrained on {config.n_train} rows, evaluated on {config.n_heldout} held-out rows "
        f"({len(config.heldout_groups)} problems)\n\n{format_layer_table(probes)}"
    )
