"""``lens-pivotal probe train|score``: call :func:`register` from the main parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

from lens_pivotal.cli.arguments import EMBEDDED, add_model_arguments, load_model_from_args, parse_ints
from lens_pivotal.probes.calibration import FalsePositiveRate, Threshold
from lens_pivotal.probes.examples import NegativeRecipe
from lens_pivotal.probes.config import SOLVERS, ProbeSettings
from lens_pivotal.pts.dataset import SHIPPED_DATASETS
from lens_pivotal.viz.tables import format_table

DEFAULTS = ProbeSettings()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``probe`` command, with its ``train`` and ``score`` subcommands."""

    probe = subparsers.add_parser("probe", help="pivotal-token probes: train per-layer probes on PTS data, score new text")
    commands = probe.add_subparsers(dest="probe_command", required=True)

    train = commands.add_parser(
        "train", help="train one linear probe per layer on a PTS dataset and evaluate it on held-out problems",
        description="Positives are the last token of each row's pivot_context (the next token is the pivot), negatives "
        "other answer positions. Writes OUT/probes/ (safetensors + config.json), metrics.json, layer_metrics.png, "
        "projection_best_layer.png and HTML views of a held-out text, and prints the layer table.",
    )
    add_model_arguments(train, EMBEDDED)
    train.add_argument("--data", required=True, help="PTS rows: a .jsonl/.parquet file or a hub id (online)")
    train.add_argument("--out", default="probes_out", help="output folder (default: probes_out)")
    train.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    train.add_argument("--layers", default=None, help="comma-separated blocks (default: all)")
    train.add_argument("--embeddings", action="store_true", help="also probe the embedding stream (HF state 0)")
    train.add_argument("--negatives-per-positive", type=float, default=1.0, help="negatives per positive (default: 1)")
    add_negatives_argument(train)
    train.add_argument("--solver", choices=SOLVERS, default=DEFAULTS.solver, help="lbfgs (default) or adam (the Algoverse probing project's)")
    train.add_argument("--l2", type=float, default=None, help="fixed L2 (default: chosen per layer by grouped CV)")
    train.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction, help="held-out fraction of problems (default: 0.2)")
    train.add_argument("--n-bootstrap", type=int, default=DEFAULTS.n_bootstrap, help="bootstrap resamples (default: 1000)")
    train.add_argument("--seed", type=int, default=DEFAULTS.seed, help="split, negatives and bootstrap seed (default: 0)")
    train.add_argument("--batch-size", type=int, default=16, help="texts per forward pass when caching (default: 16)")
    train.set_defaults(func=_cmd_train)

    transfer = commands.add_parser(
        "transfer", help="train on one PTS dataset, evaluate on another (and on all together), against the baselines",
        description="For every training set (each dataset's training problems, and all of them) and every evaluation "
        "set (each dataset's held-out problems, and all of them), trains the probes, picks the layer by grouped "
        "cross-validation on the training set, and prints its held-out AUROC beside the best baseline's with a "
        "paired interval. Writes OUT/transfer.json.",
    )
    add_model_arguments(transfer, EMBEDDED)
    transfer.add_argument("--data", action="append", default=None,
                          help=f"a PTS dataset, repeated (default: the shipped {' and '.join(SHIPPED_DATASETS)})")
    transfer.add_argument("--out", default="transfer_out", help="output folder (default: transfer_out)")
    transfer.add_argument("--layers", default=None, help="comma-separated blocks (default: all)")
    transfer.add_argument("--n-bootstrap", type=int, default=DEFAULTS.n_bootstrap, help="bootstrap resamples (default: 1000)")
    transfer.add_argument("--seed", type=int, default=DEFAULTS.seed, help="split, negatives and bootstrap seed (default: 0)")
    add_negatives_argument(transfer)
    transfer.add_argument("--batch-size", type=int, default=16, help="texts per forward pass when caching (default: 16)")
    transfer.set_defaults(func=_cmd_transfer)

    score = commands.add_parser(
        "score", help="score each token of a text: P(next token is pivotal)",
        description="Load probes saved by 'probe train' and print, per token, the probability that the next token is "
        "pivotal at the best layer (or --layer). The model defaults to the one the probes were trained on.",
    )
    score.add_argument("text", help="the text to score (tokenized without added special tokens)")
    score.add_argument("--probes", required=True, help="a probes directory written by 'probe train' (OUT/probes)")
    score.add_argument("--model", default=None, help="hub id, directory or 'embedded' (default: the probes' own model)")
    score.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    score.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    score.add_argument("--layer", type=int, default=None, help="block whose probe scores (default: the best)")
    add_threshold_arguments(score, "mark tokens scored at least this")
    score.add_argument("--html", default=None, help="also save a circuitsvis view to this file")
    score.set_defaults(func=_cmd_score)


def add_threshold_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--threshold P`` or ``--fpr RATE`` (:func:`threshold_from_args`)."""
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--threshold", type=float, default=0.5, help=f"{what} (default: 0.5)")
    chosen.add_argument("--fpr", type=float, default=None,
                        help="instead of --threshold: the threshold that lets through this share of the probes' "
                        "held-out negatives (pivots are rare: 0.5 fires more often than 'likely' suggests)")  # fmt: skip


def threshold_from_args(args: argparse.Namespace) -> Threshold:
    """``--fpr`` as a :class:`~lens_pivotal.probes.calibration.FalsePositiveRate`, else ``--threshold``."""
    return args.threshold if args.fpr is None else FalsePositiveRate(args.fpr)


def add_negatives_argument(parser: argparse.ArgumentParser) -> None:
    """``--negatives``: how negatives are drawn (:func:`lens_pivotal.probes.probe_examples`)."""
    parser.add_argument("--negatives", choices=get_args(NegativeRecipe), default="matched",
                        help="matched (default): at the positives' answer indices, whole solutions where rows carry "
                        "them; algoverse: the Algoverse probing project's recipe, confounded by position")  # fmt: skip


def _cmd_train(args: argparse.Namespace) -> int:
    from lens_pivotal.probes.workflow import format_run, train_on_pts
    from lens_pivotal.pts.schema import load_pts

    layers = parse_ints(args.layers, "--layers") if args.layers else None
    rows = load_pts(args.data)
    model = load_model_from_args(args)
    run = train_on_pts(
        model, rows, args.out, model_source=args.model, negatives=args.negatives,
        negatives_per_positive=args.negatives_per_positive,
        layers=layers, embeddings=args.embeddings, batch_size=args.batch_size, overwrite=args.overwrite,
        settings=ProbeSettings(
            solver=args.solver, l2=args.l2, val_fraction=args.val_fraction, n_bootstrap=args.n_bootstrap, seed=args.seed
        ),
    )
    for mismatch in run.examples.mismatches:
        print(f"not mapped: {mismatch}")
    print(format_run(run))
    direction = "" if run.direction is None else "direction_probes/, "
    print(f"\nwrote probes/, {direction}metrics.json, layer_metrics.png, projection_best_layer.png, "
          f"scores_best_layer.html and scores_all_layers.html under {args.out}")
    return 0


def _cmd_transfer(args: argparse.Namespace) -> int:
    from lens_pivotal._io import atomic_write_text
    from lens_pivotal.probes.transfer import format_transfer_table, transfer_matrix

    sources = {Path(source).stem: source for source in args.data or SHIPPED_DATASETS}
    if len(sources) != len(args.data or SHIPPED_DATASETS):
        raise SystemExit(f"error: --data names must differ in their last part (file stem), got {args.data}")
    model = load_model_from_args(args)
    results = transfer_matrix(
        model, sources,
        settings=ProbeSettings(n_bootstrap=args.n_bootstrap, seed=args.seed), batch_size=args.batch_size,
        negatives=args.negatives, layers=parse_ints(args.layers, "--layers") if args.layers else None,
    )
    print(format_transfer_table(results))
    out = Path(args.out) / "transfer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps([result.to_dict() for result in results], indent=1))
    print(f"\nwrote {out}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from lens_pivotal.probes.layer_probes import LayerProbes
    from lens_pivotal.probes.scoring import score_text
    from lens_pivotal.probes.views import token_scores_view

    probes = LayerProbes.load(args.probes)
    args.model = args.model or probes.config.model_source or probes.config.model_name
    model = load_model_from_args(args)
    scores = score_text(probes, model, args.text, layer=args.layer)
    threshold = probes.resolve_threshold(threshold_from_args(args), args.layer)
    print(f"P(next token is pivotal), layer {scores.layer_labels[0]} of {probes.config.model_name}; marked at >= "
          f"{threshold:.3f}")
    values = scores.scores[0].tolist()
    rows = [[str(position), repr(token), f"{value:.3f}"] for position, (token, value) in enumerate(zip(scores.tokens, values))]
    notes = ["<- likely pivot next" if value >= threshold else "" for value in values]
    print(format_table(["position", "token", "score"], rows, align="rlr", notes=notes))
    if args.html:
        token_scores_view(scores).save(args.html)
        print(f"wrote {args.html}")
    return 0
