"""Per-layer pivotal-token probes: the Algoverse probing project's loop over layers against our one batched program over all layers.

Every contender gets the same activations ``[n_layers, n_rows, d_model]``, the same labels and the same grouped
held-out split (``group_split(groups, test_fraction=val_fraction, seed=seed)`` of :class:`ProbeSettings`, the
split ``train_probes`` makes), trains one logistic probe per layer on the training groups and returns each
layer's held-out AUROC. They run in alternation in one process; ratios are medians of per-round ratios.

* ``algoverse_loop``: the Algoverse probing project's method as written there: for each layer, ``Linear(d_model, 1)`` + sigmoid, BCE, Adam
  (lr 1e-3), 10 epochs of a fresh shuffled ``DataLoader`` of batch 32, raw float32 activations, keeping the epoch
  with the lowest validation loss. The validation rows are the ones ``train_probes`` uses for Adam: a grouped split
  (same fraction, seed + 1) of the training groups, which are then not trained on.
* ``ours_adam``: ``train_probes(acts, labels, groups=groups, settings=ADAM_PROBE_SETTINGS)``: the same method on all layers
  at once (float32, zero initialisation, and a shuffled-label control head per layer trained alongside).
* ``ours_default``: ``train_probes(acts, labels, groups=groups)``: standardised inputs, balanced class weights,
  L-BFGS in float64, L2 per layer chosen from a grid by grouped 5-fold cross-validation (plus the control head).
* ``sklearn``: ``LogisticRegression(C=1)`` per layer on the raw training rows (the Algoverse probing project's sklearn baseline).
* ``sklearn_cv``: ours_default's model written with scikit-learn, layer by layer: ``StandardScaler`` then
  ``LogisticRegression`` pipelines (the scaler fitted inside each fold), the same class weights, L2 grid
  (``C = 1 / (l2 * n_train)``), CV folds and fold loss, a refit with the chosen L2, and the nested cross-validated
  AUROC ours_default also computes. It is the reference for ours_default's AUROC: the same optimum, another solver.

Both ``ours`` contenders run with ``n_bootstrap=0`` unless ``--n-bootstrap`` says otherwise: the bootstrap
intervals are extra output none of the others computes.

Data: ``embedded`` caches SmolLM2-135M's residual stream at the shipped PTS dataset's probe examples (offline);
``synthetic`` has Qwen3-0.6B's shape (embeddings + 28 blocks, d_model 1024) and the Algoverse probing project's size (600 rows, 104
problems), with a label direction written into the residual stream at one block.

    python benchmarks/bench_probes.py                                   # embedded SmolLM2, 1 negative per positive
    python benchmarks/bench_probes.py --negatives-per-positive 4
    python benchmarks/bench_probes.py --data synthetic
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, machine_description, today  # noqa: E402

from lens_pivotal.probes import ADAM_PROBE_SETTINGS, ProbeSettings, group_folds, group_split, train_probes  # noqa: E402

SETTINGS = ProbeSettings()
SKLEARN_MAX_ITER = 10_000


@dataclass
class ProbeData:
    """Activations ``[n_layers, n_rows, d_model]`` (float32), 0/1 labels, each row's group and the layer names."""

    acts: torch.Tensor
    labels: np.ndarray
    groups: list[str]
    layer_names: list[str]
    description: str


@dataclass
class Split:
    """Row indices: ``train``/``heldout`` as ``train_probes`` splits; ``fit``/``check`` index ``train`` for Adam."""

    train: np.ndarray
    heldout: np.ndarray
    fit: np.ndarray
    check: np.ndarray

    @classmethod
    def of(cls, groups: list[str]) -> Split:
        """The split ``train_probes`` makes with the default settings."""
        train, heldout = group_split(groups, test_fraction=SETTINGS.val_fraction, seed=SETTINGS.seed)
        fit, check = group_split([groups[i] for i in train], test_fraction=SETTINGS.val_fraction, seed=SETTINGS.seed + 1)
        return cls(train, heldout, fit, check)


def embedded_data(negatives_per_positive: float) -> ProbeData:
    """SmolLM2-135M's resid_post at every block for the shipped PTS dataset's probe examples."""
    import lens_pivotal as lp
    from lens_pivotal.probes import probe_examples
    from lens_pivotal.pts import load_shipped_pts

    model = lp.embedded_model(device="cpu")
    examples = probe_examples(model, load_shipped_pts(), negatives_per_positive=negatives_per_positive)
    acts = examples.cache(model, progress=False)
    names = [str(layer) for layer in range(acts.shape[0])]
    description = f"embedded SmolLM2-135M, shipped PTS, {negatives_per_positive:g} negatives/positive"
    return ProbeData(acts.float(), np.asarray(examples.labels), list(examples.groups), names, description)


def synthetic_data(n_rows: int, n_groups: int, n_blocks: int, d_model: int, planted_block: int, strength: float) -> ProbeData:
    """A residual stream of Gaussian writes (a group offset at the embeddings, unit noise at every block) with
    ``±strength/2`` along one random direction written at ``planted_block``, the sign given by the label."""
    generator = torch.Generator().manual_seed(0)
    group_of_row = torch.arange(n_rows) % n_groups
    labels = (torch.arange(n_rows) // n_groups) % 2
    direction = torch.nn.functional.normalize(torch.randn(d_model, generator=generator), dim=0)
    stream = 0.5 * torch.randn(n_groups, d_model, generator=generator)[group_of_row]
    states = []
    for state in range(n_blocks + 1):  # state 0 is the embeddings
        stream = stream + torch.randn(n_rows, d_model, generator=generator)
        if state == planted_block + 1:
            stream = stream + strength * (labels.float() - 0.5).unsqueeze(1) * direction
        states.append(stream)
    names = ["emb"] + [str(block) for block in range(n_blocks)]
    description = f"synthetic, label direction written at block {planted_block} (strength {strength:g})"
    return ProbeData(torch.stack(states), labels.numpy(), [f"problem{g}" for g in group_of_row.tolist()], names, description)


def algoverse_probe(x_fit: torch.Tensor, y_fit: torch.Tensor, x_check: torch.Tensor, y_check: torch.Tensor) -> torch.nn.Module:
    """One layer's probe as the Algoverse probing project trained it: Adam on minibatches, the best epoch's weights by validation loss."""
    probe = torch.nn.Sequential(torch.nn.Linear(x_fit.shape[1], 1), torch.nn.Sigmoid())
    optimizer = torch.optim.Adam(probe.parameters(), lr=ADAM_PROBE_SETTINGS.lr)
    loss_fn = torch.nn.BCELoss()
    loader = DataLoader(TensorDataset(x_fit, y_fit), batch_size=ADAM_PROBE_SETTINGS.batch_size, shuffle=True)
    best_loss, best_state = float("inf"), copy.deepcopy(probe.state_dict())
    for _ in range(ADAM_PROBE_SETTINGS.epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(probe(x).squeeze(-1), y).backward()
            optimizer.step()
        with torch.no_grad():
            check_loss = loss_fn(probe(x_check).squeeze(-1), y_check).item()
        if check_loss < best_loss:
            best_loss, best_state = check_loss, copy.deepcopy(probe.state_dict())
    probe.load_state_dict(best_state)
    return probe


def algoverse_loop(data: ProbeData, split: Split) -> np.ndarray:
    """Held-out AUROC per layer, one :func:`algoverse_probe` after another."""
    torch.manual_seed(SETTINGS.seed)
    y = torch.as_tensor(data.labels, dtype=torch.float32)
    fit, check = split.train[split.fit], split.train[split.check]
    aurocs = []
    for x in data.acts:
        probe = algoverse_probe(x[fit], y[fit], x[check], y[check])
        with torch.no_grad():
            scores = probe(x[split.heldout]).squeeze(-1)
        aurocs.append(roc_auc_score(data.labels[split.heldout], scores.numpy()))
    return np.array(aurocs)


def ours(data: ProbeData, n_bootstrap: int, settings: ProbeSettings = ProbeSettings()) -> np.ndarray:
    """Held-out AUROC per layer from ``train_probes`` (all layers at once)."""
    settings = dataclasses.replace(settings, n_bootstrap=n_bootstrap)
    probes = train_probes(data.acts, data.labels, groups=data.groups, settings=settings)
    return np.array(probes.config.metrics["auroc"]["value"])


def sklearn_c1(data: ProbeData, split: Split) -> np.ndarray:
    """Held-out AUROC per layer of ``LogisticRegression(C=1)`` on raw float64 activations."""
    y_train, y_heldout = data.labels[split.train], data.labels[split.heldout]
    aurocs = []
    for x in data.acts.double().numpy():
        model = LogisticRegression(C=1.0, max_iter=SKLEARN_MAX_ITER).fit(x[split.train], y_train)
        aurocs.append(roc_auc_score(y_heldout, model.predict_proba(x[split.heldout])[:, 1]))
    return np.array(aurocs)


def balanced_fit(x: np.ndarray, y: np.ndarray, l2: float) -> Pipeline:
    """ours_default's model of one fit: a scaler fitted on these rows, then ``mean_w BCE + l2/2 |w|^2`` with
    balanced weights, as sklearn's ``C``."""
    regression = LogisticRegression(C=1.0 / (l2 * len(y)), class_weight="balanced", max_iter=SKLEARN_MAX_ITER)
    return make_pipeline(StandardScaler(), regression).fit(x, y)


def balanced_log_loss(model: Pipeline, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy with balanced class weights over ``x``'s own rows (ours_default's CV fold loss)."""
    weights = np.where(y == 1, len(y) / (2 * max(y.sum(), 1)), len(y) / (2 * max(len(y) - y.sum(), 1)))
    return log_loss(y, model.predict_proba(x)[:, 1], sample_weight=weights, labels=[0, 1])


def chosen_l2(x: np.ndarray, y: np.ndarray, groups: list[str]) -> float:
    """The grid value with the lowest mean fold loss over grouped folds of these rows (each fold standardised with
    its own training rows)."""
    folds = group_folds(groups, SETTINGS.cv_folds, SETTINGS.seed, y).numpy()

    def loss(l2: float) -> float:
        fits = [(balanced_fit(x[folds != k], y[folds != k], l2), folds == k) for k in np.unique(folds)]
        return float(np.mean([balanced_log_loss(model, x[rows], y[rows]) for model, rows in fits]))

    losses = {l2: loss(l2) for l2 in SETTINGS.l2_grid}
    return min(losses, key=losses.get)


def nested_cv_auroc(x: np.ndarray, y: np.ndarray, groups: list[str]) -> float:
    """The AUROC of out-of-fold decisions, each outer fold's L2 chosen inside its training rows (as train_probes'
    ``cv_auroc``)."""
    outer = group_folds(groups, SETTINGS.cv_folds, SETTINGS.seed, y).numpy()
    decisions = np.zeros(len(y))
    for k in np.unique(outer):
        inside = outer != k
        l2 = chosen_l2(x[inside], y[inside], [group for group, keep in zip(groups, inside) if keep])
        decisions[~inside] = balanced_fit(x[inside], y[inside], l2).decision_function(x[~inside])
    return float(roc_auc_score(y, decisions))


def sklearn_cv(data: ProbeData, split: Split) -> np.ndarray:
    """Held-out AUROC per layer of ours_default's recipe with sklearn: L2 by grouped CV (a scaler inside each fold),
    refit, and the nested cross-validated AUROC that train_probes also computes (to pick its layer)."""
    y_train, y_heldout = data.labels[split.train], data.labels[split.heldout]
    train_groups = [data.groups[i] for i in split.train]
    aurocs = []
    for x in data.acts.double().numpy():
        model = balanced_fit(x[split.train], y_train, chosen_l2(x[split.train], y_train, train_groups))
        aurocs.append(roc_auc_score(y_heldout, model.predict_proba(x[split.heldout])[:, 1]))
        nested_cv_auroc(x[split.train], y_train, train_groups)
    return np.array(aurocs)


def contenders(data: ProbeData, split: Split, n_bootstrap: int) -> dict[str, Callable[[], np.ndarray]]:
    """Each contender as a no-argument call returning held-out AUROC per layer."""
    return {
        "algoverse_loop": lambda: algoverse_loop(data, split),
        "ours_adam": lambda: ours(data, n_bootstrap, ADAM_PROBE_SETTINGS),
        "ours_default": lambda: ours(data, n_bootstrap),
        "sklearn": lambda: sklearn_c1(data, split),
        "sklearn_cv": lambda: sklearn_cv(data, split),
    }


def recording(runs: dict[str, Callable[[], np.ndarray]], results: dict[str, np.ndarray]) -> dict[str, Callable[[], None]]:
    """The same calls, each storing its last AUROCs in ``results``."""
    def record(name: str, run: Callable[[], np.ndarray]) -> Callable[[], None]:
        return lambda: results.__setitem__(name, run())

    return {name: record(name, run) for name, run in runs.items()}


def print_aurocs(data: ProbeData, results: dict[str, np.ndarray]) -> None:
    """Per-layer held-out AUROC of every contender, then the best layers and the gaps that matter."""
    names = list(results)
    print("\n| layer | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for layer, label in enumerate(data.layer_names):
        print(f"| {label} | " + " | ".join(f"{results[name][layer]:.3f}" for name in names) + " |")
    for name in names:
        best = int(np.argmax(results[name]))
        print(f"{name:>12}: best layer {data.layer_names[best]} (AUROC {results[name][best]:.3f}), "
              f"mean over layers {results[name].mean():.3f}")
    for ours_name, theirs in (("ours_default", "sklearn_cv"), ("ours_default", "sklearn"), ("ours_adam", "algoverse_loop")):
        gap = results[ours_name] - results[theirs]
        worst = int(np.argmax(np.abs(gap)))
        print(f"AUROC {ours_name} - {theirs}: max |diff| {np.abs(gap).max():.4f} (layer {data.layer_names[worst]}, "
              f"{gap[worst]:+.4f}), mean diff {gap.mean():+.4f}, mean |diff| {np.abs(gap).mean():.4f}, "
              f"layers within 0.01: {int((np.abs(gap) <= 0.01).sum())}/{len(gap)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("embedded", "synthetic"), default="embedded")
    parser.add_argument("--negatives-per-positive", type=float, default=1.0, help="embedded: negatives drawn per positive")
    parser.add_argument("--rows", type=int, default=600, help="synthetic: rows (default: the Algoverse probing project's 600)")
    parser.add_argument("--groups", type=int, default=104, help="synthetic: problems (default: the Algoverse probing project's 104)")
    parser.add_argument("--blocks", type=int, default=28, help="synthetic: blocks, plus the embeddings (default: Qwen3-0.6B's 28)")
    parser.add_argument("--d-model", type=int, default=1024, help="synthetic: width (default: Qwen3-0.6B's 1024)")
    parser.add_argument("--planted-block", type=int, default=14, help="synthetic: block writing the label direction")
    parser.add_argument("--strength", type=float, default=8.0, help="synthetic: distance between the class means")
    parser.add_argument("--n-bootstrap", type=int, default=0, help="ours: bootstrap resamples (default 0: not timed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.data == "embedded":
        data = embedded_data(args.negatives_per_positive)
    else:
        data = synthetic_data(args.rows, args.groups, args.blocks, args.d_model, args.planted_block, args.strength)
    split = Split.of(data.groups)
    results: dict[str, np.ndarray] = {}
    runs = recording(contenders(data, split, args.n_bootstrap), results)
    timings = alternate(runs, repeats=args.repeats, device=torch.device("cpu"))

    n_layers, n_rows, d_model = data.acts.shape
    shape = f"{n_rows} × {n_layers} × {d_model}"
    print(f"machine: {machine_description(torch.device('cpu'))}; date {today()}; {args.repeats} rounds after 1 warm-up")
    print(f"data: {data.description}; rows × layers × d_model = {shape}; {int(data.labels.sum())} positive; "
          f"{len(set(data.groups))} groups; train {len(split.train)} (Adam: fit {len(split.fit)}, check "
          f"{len(split.check)}), held-out {len(split.heldout)}; ours n_bootstrap={args.n_bootstrap}")
    for name in runs:
        print(f"{name:>12}: {timings.median(name):8.3f} s (rounds: {', '.join(f'{s:.3f}' for s in timings.seconds[name])})")
    ratios = {theirs: timings.ratio("algoverse_loop", theirs) for theirs in ("ours_adam", "ours_default")}
    for theirs, ratio in ratios.items():
        print(f"algoverse_loop / {theirs} (median of per-round ratios): {ratio:.2f}x")
    print(f"sklearn_cv / ours_default: {timings.ratio('sklearn_cv', 'ours_default'):.2f}x")
    print_aurocs(data, results)
    seconds = " | ".join(f"{timings.median(name):.2f}" for name in runs)
    print("\n| date | machine | data | rows × layers × d_model | " + " | ".join(f"{name} s" for name in runs)
          + " | loop / ours_adam | loop / ours_default |")
    print(f"| {today()} | {machine_description(torch.device('cpu'))} | {args.data} | {shape} | {seconds} | "
          f"{ratios['ours_adam']:.1f}× | {ratios['ours_default']:.2f}× |")


if __name__ == "__main__":
    main()
