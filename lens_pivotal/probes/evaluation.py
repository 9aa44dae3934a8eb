"""Train probes and judge them: held-out metrics with problem-bootstrap intervals, the cross-validated AUROC that
picks the best layer, the baselines a sceptical reviewer tries first, Hewitt & Liang's control task, a permutation
null, and what a gate does on whole texts.

:func:`train_probes` splits the problems (:mod:`lens_pivotal.probes.selection`), fits
:class:`~lens_pivotal.probes.LayerProbes` on the training side (with the control task and the permutation null as
more heads of the same batched solve), and records every result in the probes' config, so that a refit or a reload
always describes the weights it sits beside.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from functools import partial
from typing import Any, Callable, Collection, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lens_pivotal.model import UNKNOWN_MODEL, Layer, read_hooks
from lens_pivotal.probes.baselines import check_baselines, fit_baselines, fit_logistic
from lens_pivotal.probes.calibration import Threshold
from lens_pivotal.probes.config import ProbeConfig, ProbeSettings, checked_settings
from lens_pivotal.probes.controls import control_task_labels, permutation_labels, permutation_p_values
from lens_pivotal.probes.examples import ProbeExamples
from lens_pivotal.probes.layer_probes import LayerProbes, as_labels, require_layered
from lens_pivotal.probes.metrics import LayerMetrics, auroc_per_row, heldout_metrics, paired_auroc_difference
from lens_pivotal.probes.scoring import score_text
from lens_pivotal.probes.selection import group_split, heldout_split, out_of_fold_logits

UNCERTAINTY_BASELINES = ("entropy", "top1_prob")  # the model's own uncertainty, which a probe must add to


def train_probes(
    acts: Float[Tensor, "n_layers n_rows d_model"],
    labels: Sequence[int] | Tensor,
    *,
    groups: Sequence[str] | None = None,
    model: Any | None = None,
    layers: Sequence[int] | None = None,
    embeddings: bool = False,
    settings: ProbeSettings | None = None,
    baselines: dict[str, Tensor] | None = None,
    heldout_groups: Collection[str] | None = None,
    control_types: Sequence[int] | None = None,
) -> LayerProbes:
    """Train one probe per layer of ``acts`` (all layers at once) and evaluate them on held-out groups.

    Args:
        acts: ``[n_layers, n_rows, d_model]`` from ``cache_resid_post`` / ``ProbeExamples.cache``; train on GPU by
            passing CUDA activations.
        labels: 1 where the next token is pivotal, else 0.
        groups: the problem of each row; splits never put one problem on both sides.
        model: the model ``acts`` came from: recorded in the config (model name, shape) so that
            :meth:`LayerProbes.load` can catch a mismatch.
        layers, embeddings: as given to the cache call (with or without ``model``): the blocks ``acts`` holds, in
            order, so every later ``layer=`` names the block it means.
        settings: how to train and evaluate, e.g. ``ProbeSettings(l2=1e-2, val_fraction=0.2)`` (default:
            ``ProbeSettings()``); ``ADAM_PROBE_SETTINGS`` reproduces the Algoverse probing project's probe.
        baselines: per-row scores a probe must beat (:func:`~lens_pivotal.probes.example_baselines`: entropy,
            top-1 probability, position, token), each fitted and oriented on the training groups and scored on the
            held-out ones like the probes (:attr:`LayerProbes.baseline_metrics`,
            :attr:`LayerProbes.versus_best_baseline`, :attr:`LayerProbes.with_uncertainty`).
        heldout_groups: the problems to hold out (e.g. another problem family's, to measure transfer); default: a
            seeded ``settings.val_fraction`` of them.
        control_types: each row's current-token id (``ProbeExamples.current_tokens``): trains Hewitt & Liang's
            control task (:mod:`lens_pivotal.probes.controls`), which :attr:`LayerProbes.selectivity` needs.

    Returns:
        :class:`LayerProbes` fitted on the training groups (:meth:`LayerProbes.fit`), with per-layer metrics on the
        held-out groups, the cross-validated AUROC on the training groups (nested: each fold's L2 chosen inside it)
        that picks the best layer, the control task (with ``control_types``) and the permutation null trained on the
        same rows.
    """
    require_layered(acts)
    probes = _unfitted(acts, model, layers, embeddings, checked_settings(settings))
    x, y, groups = probes.check_training_data(acts, labels, groups)
    chosen = probes.config.settings
    if heldout_groups is None:
        train, heldout = group_split(groups, test_fraction=chosen.val_fraction, seed=chosen.seed)
    else:
        train, heldout = heldout_split(groups, heldout_groups)
    train_groups, heldout_groups = [groups[i] for i in train], [groups[i] for i in heldout]
    # The control task and the permutation null train beside the probes, as more heads of the same batched program.
    control = None
    if control_types is not None:
        control = control_task_labels(_check_types(control_types, len(y)), float(y[train].mean()), chosen.seed,
                                      both_classes_in=train).to(y)  # fmt: skip
    permuted = permutation_labels(y[train], chosen.n_permutations, chosen.seed)
    heads = probes.fit_heads(x[:, train], torch.cat([y[train][None], *([] if control is None else [control[train][None]]), permuted]),
                             train_groups)  # fmt: skip
    heldout_logits = heads.logits(probes.standardize(x[:, heldout])).cpu()
    scores = torch.sigmoid(heldout_logits)
    y_heldout = y[heldout].cpu()
    metrics = heldout_metrics(scores[:, 0], y_heldout, heldout_groups, n_bootstrap=chosen.n_bootstrap, seed=chosen.seed)
    controls = _control_results(scores, y_heldout, None if control is None else control[heldout].cpu(), metrics)
    fixed_l2 = None if chosen.chooses_l2 else torch.tensor(probes.config.l2)
    out_of_fold = out_of_fold_logits(probes.standardize(x[:, train]), y[train], train_groups, chosen, fixed_l2)
    cv_auroc = None if out_of_fold is None else auroc_per_row(out_of_fold.cpu(), y[train].cpu())
    _record_results(probes, metrics, controls, heldout_groups, len(train), cv_auroc)
    gate_scores = probes.predict_proba(acts[:, heldout]).cpu()  # as a gate or a recorder computes them
    probes.config.calibration = {
        name: [sorted(row) for row in gate_scores[:, y_heldout == label].tolist()]
        for name, label in (("negative_scores", 0), ("positive_scores", 1))
    }
    if baselines:
        split = (torch.as_tensor(train), torch.as_tensor(heldout))
        probe_logits = torch.zeros(probes.n_layers, len(y), dtype=torch.float64)
        probe_logits[:, split[1]] = heldout_logits[:, 0].double()
        if out_of_fold is not None:
            probe_logits[:, split[0]] = out_of_fold.cpu().double()
        _evaluate_baselines(probes, baselines, y.cpu(), split, heldout_groups, probe_logits, out_of_fold is not None)
    return probes


def evaluate_probes(
    probes: LayerProbes,
    acts: Float[Tensor, "n_layers n_rows d_model"],
    labels: Sequence[int] | Tensor,
    groups: Sequence[str] | None = None,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> LayerMetrics:
    """Accuracy, balanced accuracy, F1, AUROC and AUPRC of fitted ``probes`` on these rows, per layer, with bootstrap
    intervals over ``groups`` (rows, without groups)."""
    scores = probes.predict_proba(acts).cpu()
    return heldout_metrics(scores, as_labels(labels, scores.shape[1]), groups, n_bootstrap=n_bootstrap, seed=seed)


def gate_precision(
    probes: LayerProbes,
    model: Any,
    examples: ProbeExamples,
    thresholds: Sequence[Threshold],
    *,
    groups: Sequence[str] | None = None,
    layer: Layer | None = None,
) -> list[dict[str, float]]:
    """What a gate at each threshold does on whole texts: every answer state of the texts of ``groups`` (default: the
    probes' held-out problems) scored at ``layer``, a state pivotal where ``examples`` holds it as a positive and
    not pivotal elsewhere (true for texts that are whole searched solutions, ``negatives="matched"`` on rows with
    ``solution``). Per threshold: the threshold, the fraction of states it fires on, its precision and recall."""
    chosen = set(probes.config.heldout_groups if groups is None else groups)
    positives = {(text, position) for text, position, label in zip(examples.text_index, examples.positions, examples.labels) if label}
    scores, labels = [], []
    for text in sorted({text for text, group in zip(examples.text_index, examples.groups) if group in chosen}):
        ids, start = examples.token_ids[text], max(examples.answer_starts[text] - 1, 0)
        scored = score_text(probes, model, ids, layer).scores[0]
        scores.append(scored[start : len(ids) - 1])
        labels += [int((text, position) in positives) for position in range(start, len(ids) - 1)]
    states, pivotal = torch.cat(scores).double(), torch.tensor(labels, dtype=torch.bool)
    return [_gate_row(states, pivotal, probes.resolve_threshold(threshold, layer)) for threshold in thresholds]


def _gate_row(scores: Tensor, pivotal: Tensor, threshold: float) -> dict[str, float]:
    fired = scores >= threshold
    hits = int((fired & pivotal).sum())
    return {"threshold": threshold, "fired": float(fired.double().mean()), "pivotal_share": float(pivotal.double().mean()),
            "precision": hits / int(fired.sum()) if fired.any() else float("nan"),
            "recall": hits / int(pivotal.sum()) if pivotal.any() else float("nan")}  # fmt: skip


def _unfitted(acts: Tensor, model: Any | None, layers: Sequence[int] | None, embeddings: bool, settings: ProbeSettings) -> LayerProbes:
    """Probes for the layers ``acts`` holds: named after ``model`` when given."""
    if model is not None:
        return LayerProbes.from_model(model, layers=layers, embeddings=embeddings, settings=settings)
    n_model_layers, hook_names = read_hooks(None, layers, embeddings, n_slots=acts.shape[0])
    return LayerProbes(ProbeConfig(UNKNOWN_MODEL, acts.shape[2], n_model_layers, hook_names, settings))


def _record_results(
    probes: LayerProbes, metrics: LayerMetrics, controls: dict[str, list[float] | None], groups: list[str],
    n_train: int, cv_auroc: Tensor | None,
) -> None:
    heldout_best = int(torch.nan_to_num(metrics.values["auroc"], nan=-1).argmax())
    if cv_auroc is None:
        warnings.warn(
            "too few training problems to cross-validate: the best layer is the one with the best held-out AUROC, "
            "whose held-out numbers are then optimistic", stacklevel=3,
        )  # fmt: skip
    probes.config = replace(
        probes.config,
        metrics=metrics.to_dict(),
        **controls,
        cv_auroc=None if cv_auroc is None else [float(value) for value in cv_auroc],
        best_layer=heldout_best if cv_auroc is None else int(torch.nan_to_num(cv_auroc, nan=-1).argmax()),
        best_heldout_layer=heldout_best,
        n_train=n_train,
        n_heldout=len(groups),
        heldout_groups=sorted(set(groups)),
    )


def _check_types(types: Sequence[int], n_rows: int) -> list[int]:
    if len(types) != n_rows:
        raise ValueError(f"control_types must give one token type per row: {n_rows} rows, got {len(types)}")
    return [int(value) for value in types]


def _control_results(
    scores: Float[Tensor, "n_layers n_heads n"], y: Tensor, control: Tensor | None, metrics: LayerMetrics
) -> dict[str, list[float] | None]:
    """The control task's held-out AUROC against its own labels (head 1, when there is one) and the permutation
    p-value of the task's AUROC (the last heads), per layer."""
    first_null = 1 if control is None else 2
    n_layers, n_permutations = scores.shape[0], scores.shape[1] - first_null
    null = auroc_per_row(scores[:, first_null:].reshape(-1, scores.shape[-1]), y).view(n_layers, n_permutations)
    return {
        "control_task_auroc": None if control is None else auroc_per_row(scores[:, 1], control).tolist(),
        "permutation_p": permutation_p_values(metrics.values["auroc"].double(), null).tolist() if n_permutations else None,
    }


def _evaluate_baselines(
    probes: LayerProbes,
    baselines: dict[str, Tensor],
    y: Tensor,
    split: tuple[Tensor, Tensor],
    held_groups: list[str],
    probe_logits: Float[Tensor, "n_layers n"],
    combine: bool,
) -> None:
    """Score each baseline on the held-out groups and compare the probes with the best one, and (with ``combine``
    and an uncertainty baseline) the probe + uncertainty combination with the uncertainty baselines alone, paired
    over the same bootstrap resamples of the held-out groups. ``probe_logits`` holds the held-out rows' logits and,
    on the training rows, out-of-fold logits (the combination is fitted there on logits the probe did not train on)."""
    settings, (train, heldout) = probes.config.settings, split
    check_baselines(baselines, len(y))
    balanced = settings.class_weight == "balanced"
    probabilities = fit_baselines({name: values.cpu() for name, values in baselines.items()}, y, train, balanced=balanced)
    probabilities, y_held = probabilities[:, heldout], y[heldout].double()
    result = heldout_metrics(probabilities, y_held, held_groups, n_bootstrap=settings.n_bootstrap, seed=settings.seed)
    names = list(baselines)
    probes.config.baseline_metrics = {
        name: {
            **{metric: float(result.values[metric][index]) for metric in result.values},
            **{f"{metric}_low": float(result.low[metric][index]) for metric in result.values},
            **{f"{metric}_high": float(result.high[metric][index]) for metric in result.values},
        }
        for index, name in enumerate(names)
    }
    best = int(result.values["auroc"].argmax())
    compare = partial(paired_auroc_difference, labels=y_held, groups=held_groups, n_bootstrap=settings.n_bootstrap,
                      seed=settings.seed, confidence=result.confidence)  # fmt: skip
    probes.config.versus_best_baseline = {
        "baseline": names[best], **compare(probe_logits[:, heldout], probabilities[best])
    }
    uncertainty = [name for name in UNCERTAINTY_BASELINES if name in baselines]
    if combine and uncertainty:
        probes.config.with_uncertainty = _with_uncertainty(
            [baselines[name].cpu().double() for name in uncertainty], probe_logits, y, split, held_groups, settings, compare
        ) | {"features": uncertainty}


def _with_uncertainty(
    uncertainty: list[Tensor], probe_logits: Float[Tensor, "n_layers n"], y: Tensor, split: tuple[Tensor, Tensor],
    held_groups: list[str], settings: ProbeSettings, compare: Callable[..., dict[str, list[float]]],
) -> dict[str, Any]:
    """Held-out AUROC of each layer's probe logit beside the ``uncertainty`` features, of those features alone, and
    the paired difference (each combination a logistic regression fitted on the training rows)."""
    (train, heldout), balanced = split, settings.class_weight == "balanced"
    alone_features = torch.stack(uncertainty, dim=-1).unsqueeze(0)
    alone = fit_logistic(alone_features, y, train, balanced=balanced)[:, heldout]
    features = torch.cat([probe_logits.unsqueeze(-1), alone_features.expand(len(probe_logits), -1, -1)], dim=-1)
    combined = fit_logistic(features, y, train, balanced=balanced)[:, heldout]
    scored = heldout_metrics(torch.cat([combined, alone]), y[heldout].double(), held_groups,
                             n_bootstrap=settings.n_bootstrap, seed=settings.seed)  # fmt: skip
    auroc, low, high = (part["auroc"].tolist() for part in (scored.values, scored.low, scored.high))
    return {
        "auroc": auroc[:-1], "auroc_low": low[:-1], "auroc_high": high[:-1],
        "uncertainty_auroc": auroc[-1], "uncertainty_auroc_low": low[-1], "uncertainty_auroc_high": high[-1],
        "minus_uncertainty": compare(combined, alone[0]),
    }  # fmt: skip
