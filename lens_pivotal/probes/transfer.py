"""Do pivotal-token probes transfer between problem families?

For every training set (each family's training problems, and all families' together) and every evaluation set (each
family's held-out problems, and all of them), probes and baselines are fitted on the training set and scored on the
evaluation set: the same held-out problems in every column, so a row reads as "what training on this buys". Each
cell reports the layer chosen by grouped cross-validation on its training set, never on the evaluation set.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lens_pivotal.probes.baselines import example_baselines
from lens_pivotal.probes.config import ProbeSettings
from lens_pivotal.probes.evaluation import train_probes
from lens_pivotal.probes.examples import NegativeRecipe, probe_examples
from lens_pivotal.probes.layer_probes import LayerProbes
from lens_pivotal.probes.selection import group_split
from lens_pivotal.probes.workflow import last_block_rows
from lens_pivotal.pts.schema import PivotalToken
from lens_pivotal.viz import format_table

ALL_FAMILIES = "all"


@dataclass(frozen=True)
class TransferResult:
    """One cell of the transfer matrix: probes trained on ``train``, scored on ``evaluate``'s held-out problems at
    the layer cross-validation picked on ``train``, beside the best baseline (by AUROC on the same rows)."""

    train: str
    evaluate: str
    layer: str
    auroc: float
    auroc_low: float
    auroc_high: float
    best_baseline: str
    baseline_auroc: float
    baseline_low: float
    baseline_high: float
    minus_baseline: float
    minus_baseline_low: float
    minus_baseline_high: float
    n_train_problems: int
    n_eval_problems: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass
class _Family:
    """One family's examples, activations, baselines and its split into training and held-out problems."""

    acts: Tensor
    labels: Tensor
    groups: list[str]
    baselines: dict[str, Tensor]
    heldout: set[str]


def transfer_matrix(
    model: Any,
    datasets: Mapping[str, Iterable[PivotalToken] | str | os.PathLike],
    *,
    settings: ProbeSettings | None = None,
    negatives: NegativeRecipe = "matched",
    negatives_per_positive: float = 1.0,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
) -> list[TransferResult]:
    """Train probes on each family of ``datasets`` (name → PTS rows, a file or a shipped name) and on all of them,
    and score each on every family's held-out problems and on all of them together.

    Each family is split into training and held-out problems once (``settings.val_fraction``, ``settings.seed``), so
    in-family cells equal :func:`~lens_pivotal.probes.train_probes` on that family alone. Problems are named
    ``"{family}/{group}"``, so two families that share problem names never trade rows between training and held-out.
    """
    if len(datasets) < 2:
        raise ValueError(f"transfer needs at least 2 datasets, got {len(datasets)}")
    if ALL_FAMILIES in datasets:
        raise ValueError(f"{ALL_FAMILIES!r} names the union of the families: give that dataset another name")
    settings = replace(settings or ProbeSettings(), n_permutations=0)  # a cell reports no p-value: no null to train
    families = {}
    for name, rows in datasets.items():
        examples = probe_examples(
            model, rows, negatives=negatives, negatives_per_positive=negatives_per_positive, seed=settings.seed
        )
        acts = examples.cache(model, layers=layers, batch_size=batch_size, progress=False)
        baselines = example_baselines(model, examples, final_resid=last_block_rows(model, acts, layers), batch_size=batch_size)
        _, heldout = group_split(examples.groups, test_fraction=settings.val_fraction, seed=settings.seed)
        groups = [f"{name}/{group}" for group in examples.groups]
        families[name] = _Family(acts, examples.label_tensor, groups, baselines, {groups[index] for index in heldout})
    members = {**{name: [name] for name in families}, ALL_FAMILIES: list(families)}
    cells = [(train, evaluate) for train in members for evaluate in members]
    results = []
    for train, evaluate in tqdm(cells, desc="transfer cells", unit="cell"):
        results.append(_cell(model, families, train, evaluate, members, layers, settings))
    return results


def _cell(
    model: Any, families: dict[str, _Family], train: str, evaluate: str, members: dict[str, list[str]],
    layers: Sequence[int] | None, settings: ProbeSettings,
) -> TransferResult:
    """Probes on ``train``'s training problems, scored on ``evaluate``'s held-out problems."""
    parts = []
    for name, family in families.items():
        keep = [
            (name in members[train] and group not in family.heldout) or (name in members[evaluate] and group in family.heldout)
            for group in family.groups
        ]
        parts.append((family, torch.tensor(keep)))
    acts = torch.cat([family.acts[:, keep] for family, keep in parts], dim=1)
    labels = torch.cat([family.labels[keep] for family, keep in parts])
    groups = [group for family, keep in parts for group, kept in zip(family.groups, keep.tolist()) if kept]
    baselines = {
        baseline: torch.cat([family.baselines[baseline][keep] for family, keep in parts]) for baseline in parts[0][0].baselines
    }
    heldout = {group for name in members[evaluate] for group in families[name].heldout}
    probes = train_probes(acts, labels, groups=groups, model=model, layers=layers, settings=settings,
                          baselines=baselines, heldout_groups=heldout)
    return _result(probes, train, evaluate, n_train_problems=len(set(groups) - heldout), n_eval_problems=len(heldout))


def _result(probes: LayerProbes, train: str, evaluate: str, **counts: int) -> TransferResult:
    best, metrics, versus = probes.slot(probes.best_layer), probes.metrics, probes.versus_best_baseline
    baseline = probes.baseline_metrics[versus["baseline"]]
    return TransferResult(
        train=train, evaluate=evaluate, layer=probes.layer_labels[best],
        auroc=float(metrics.values["auroc"][best]), auroc_low=float(metrics.low["auroc"][best]),
        auroc_high=float(metrics.high["auroc"][best]), best_baseline=versus["baseline"],
        baseline_auroc=baseline["auroc"], baseline_low=baseline["auroc_low"], baseline_high=baseline["auroc_high"],
        minus_baseline=versus["value"][best], minus_baseline_low=versus["low"][best], minus_baseline_high=versus["high"][best],
        **counts,
    )  # fmt: skip


def format_transfer_table(results: Sequence[TransferResult]) -> str:
    """One row per (training set, evaluation set): the probe's held-out AUROC at its cross-validated layer, the best
    baseline's on the same rows, and their paired difference, each with its 95% interval."""
    rows = [
        [
            result.train, result.evaluate, result.layer,
            f"{result.auroc:.3f} [{result.auroc_low:.2f}, {result.auroc_high:.2f}]",
            f"{result.best_baseline} {result.baseline_auroc:.3f} [{result.baseline_low:.2f}, {result.baseline_high:.2f}]",
            f"{result.minus_baseline:+.3f} [{result.minus_baseline_low:+.2f}, {result.minus_baseline_high:+.2f}]",
            f"{result.n_train_problems} / {result.n_eval_problems}",
        ]
        for result in results
    ]  # fmt: skip
    header = ["trained on", "evaluated on", "layer", "probe AUROC", "best baseline AUROC", "probe - baseline", "problems"]
    return format_table(header, rows, align="llrrrrr")
