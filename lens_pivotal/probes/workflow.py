"""The whole probe workflow on a PTS dataset, writing every artefact to one folder: what ``lens-pivotal probe train``
and ``make demo`` run.

``PTS rows → probe examples → resid_post cache → all-layer probes → probes/ + metrics.json + plots + HTML views``
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from lens_pivotal._io import atomic_write_text
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
) -> tuple[LayerProbes, ProbeExamples]:
    """Train probes on PTS ``rows`` and write ``out/probes/``, ``metrics.json``, ``layer_metrics.png``,
    ``projection_best_layer.png`` and ``scores_best_layer.html`` / ``scores_all_layers.html`` (a held-out text).

    ``settings`` (a :class:`~lens_pivotal.probes.ProbeSettings`) say how to train; its ``seed`` also seeds the negatives.
    """
    out = Path(out)
    settings = settings or ProbeSettings()
    examples = probe_examples(model, rows, negatives_per_positive=negatives_per_positive, seed=settings.seed)
    acts = examples.cache(model, layers=layers, embeddings=embeddings, batch_size=batch_size, progress=False)
    baselines = examples.baselines(model, final_resid=_last_block_rows(model, acts, layers), batch_size=batch_size)
    probes = train_probes(
        acts, examples.labels, groups=examples.groups, model=model, layers=layers, embeddings=embeddings,
        settings=settings, baselines=baselines,
    )
    probes.config.model_source = model_source
    probes.save(out / "probes")
    atomic_write_text(out / "metrics.json", json.dumps(metrics_record(probes, examples), indent=1))
    save_figure(plot_layer_metrics(probes), out / "layer_metrics.png")
    best = probes.best_layer
    projection = plot_projection(
        acts[best], examples.labels, probes.predict_proba(acts)[best],
        title=f"PCA of layer {probes.layer_labels[best]} (best), all examples",
    )
    save_figure(projection, out / "projection_best_layer.png")
    text = heldout_text(probes, examples)
    token_scores_view(probes.score_text(model, text)).save(out / "scores_best_layer.html")
    token_scores_view(probes.score_text(model, text, layer="all")).save(out / "scores_all_layers.html")
    return probes, examples


def _last_block_rows(model: Any, acts: Any, layers: Sequence[int] | None) -> Any:
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
    """JSON-ready summary: data counts, per-layer metrics with intervals, control, selectivity and the best layer."""
    config = probes.config
    return {
        "model_name": config.model_name,
        "examples": {"total": len(examples), "pivotal": sum(examples.labels), "texts": len(examples.token_ids),
                     "groups": len(set(examples.groups)), "rows_not_mapped": examples.mismatches},
        "n_train": config.n_train,
        "n_heldout": config.n_heldout,
        "layers": probes.layer_labels,
        "best_layer": probes.layer_labels[probes.best_layer],
        "metrics": config.metrics,
        "control_auroc": config.control_auroc,
        "selectivity": probes.selectivity.tolist(),
        "l2": config.l2,
        "baselines": config.baseline_metrics,
        "versus_best_baseline": config.versus_best_baseline,
    }


def format_layer_table(probes: LayerProbes) -> str:
    """A fixed-width table, one row per layer: held-out AUROC with its interval, AUPRC, balanced accuracy, F1,
    the shuffled-label control's AUROC, selectivity (AUROC minus control) and the L2 used; the best layer marked."""
    result, config, selectivity = probes.metrics, probes.config, probes.selectivity.tolist()
    rows = []
    for index, label in enumerate(probes.layer_labels):
        value = {name: float(values[index]) for name, values in result.values.items()}
        auroc = f"{value['auroc']:.3f} [{float(result.low['auroc'][index]):.2f}, {float(result.high['auroc'][index]):.2f}]"
        numbers = (value["auprc"], value["balanced_accuracy"], value["f1"], config.control_auroc[index], selectivity[index])
        rows.append([label, auroc, *(f"{number:.3f}" for number in numbers), f"{config.l2[index]:.0e}"])
    header = ["layer", "AUROC [95% CI]", "AUPRC", "bal.acc", "F1", "control", "select.", "l2"]
    versus = probes.versus_best_baseline
    if versus is not None:
        header.append(f"AUROC - {versus['baseline']} [95% CI]")
        for index, row in enumerate(rows):
            row.append(f"{versus['value'][index]:+.3f} [{versus['low'][index]:+.2f}, {versus['high'][index]:+.2f}]")
    notes = ["<- best" if index == probes.best_layer else "" for index in range(len(rows))]
    table = format_table(header, rows, align="rlrrrrrr" + "r" * (versus is not None), notes=notes)
    return f"{format_baseline_table(probes)}\n\n{table}" if probes.baseline_metrics else table


def format_baseline_table(probes: LayerProbes) -> str:
    """The baselines' held-out AUROC (with intervals), AUPRC, balanced accuracy and F1, on the probes' held-out rows."""
    rows = []
    for name, value in probes.baseline_metrics.items():
        auroc = f"{value['auroc']:.3f} [{value['auroc_low']:.2f}, {value['auroc_high']:.2f}]"
        rows.append([name, auroc, *(f"{value[metric]:.3f}" for metric in ("auprc", "balanced_accuracy", "f1"))])
    caption = "Baselines (no probe), fitted and oriented on the training problems, scored on the same held-out rows:"
    return f"{caption}\n" + format_table(["baseline", "AUROC [95% CI]", "AUPRC", "bal.acc", "F1"], rows, align="lrrrr")


def probe_demo(model: Any, out: str | os.PathLike, *, model_source: str = "embedded") -> str:
    """``make demo``'s probe part: train on the shipped PTS dataset, write everything under ``out``, return the
    print-ready summary and layer table."""
    from lens_pivotal.pts.dataset import load_shipped_pts

    probes, examples = train_on_pts(model, load_shipped_pts(), out, model_source=model_source)
    config = probes.config
    return (
        f"{examples}\ntrained on {config.n_train} rows, evaluated on {config.n_heldout} held-out rows "
        f"({len(config.heldout_groups)} problems)\n\n{format_layer_table(probes)}"
    )
