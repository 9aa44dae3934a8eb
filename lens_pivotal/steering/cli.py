"""``lens-pivotal steer eval``: call :func:`register` from the main parser."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lens_pivotal.cli.arguments import EMBEDDED, add_model_arguments, add_problem_arguments, load_model_from_args, problems_from_args
from lens_pivotal.model import resid_post_hook
from lens_pivotal.probes.cli import add_threshold_arguments, threshold_from_args
from lens_pivotal.pts.dataset import SHIPPED_DATASETS
from lens_pivotal.pts.prompts import PROMPT_PRESETS
from lens_pivotal.steering.vectors import METHODS, SIGNS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``steer`` command, with its ``eval`` subcommand."""
    steer = subparsers.add_parser("steer", help="steering with pivotal directions, measured with controls")
    commands = steer.add_subparsers(dest="steer_command", required=True)
    evaluate = commands.add_parser(
        "eval", help="build a steering vector from PTS data and measure success with and without it",
        description="Builds the vector at --layer from --data (mean difference of pivotal and other answer states), then "
        "samples held-out problems (those not in --data) with no steering, steered at each --alphas (x the layer's mean "
        "residual norm), gated by --probes if given, and a random direction of the same norm for each; grades them and "
        "writes OUT/report.json, OUT/success_vs_alpha.png and OUT/vectors/.",
    )
    add_model_arguments(evaluate, EMBEDDED)
    evaluate.add_argument("--data", default=next(iter(SHIPPED_DATASETS)), help="PTS rows the vector is built from")
    evaluate.add_argument("--layer", type=int, default=None, help="block to steer (default: the probes' best, else the middle)")
    evaluate.add_argument("--alphas", default="1,2,4", help="comma-separated steering strengths (default: 1,2,4)")
    evaluate.add_argument("--method", choices=METHODS, default="mean_difference", help="how the vector is made")
    evaluate.add_argument("--sign", choices=SIGNS, default=None, help="which pivots (default: positive; any for probe)")
    evaluate.add_argument("--positions", choices=("generated", "all"), default="generated", help="where to add it")
    evaluate.add_argument("--probes", default=None, help="probes directory: also run gated settings (and method probe)")
    add_threshold_arguments(evaluate, "gate threshold on the probe score")
    add_problem_arguments(evaluate)
    evaluate.add_argument("--samples", type=int, default=8, help="solutions per problem and setting (default: 8)")
    evaluate.add_argument("--max-new-tokens", type=int, default=32, help="tokens per solution (default: 32)")
    evaluate.add_argument("--prompt", choices=sorted(PROMPT_PRESETS), default="arithmetic-one-shot")
    evaluate.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed (default: 0)")
    evaluate.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    evaluate.add_argument("--out", default="steer_out", help="output folder (default: steer_out)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    evaluate.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from lens_pivotal._io import atomic_dir, refuse_existing
    from lens_pivotal.cli.arguments import parse_floats
    from lens_pivotal.probes.examples import probe_examples
    from lens_pivotal.probes.layer_probes import LayerProbes
    from lens_pivotal.pts.schema import load_pts
    from lens_pivotal.steering.evaluation import alpha_sweep, evaluate_steering
    from lens_pivotal.steering.plots import plot_alpha_sweep
    from lens_pivotal.steering.vectors import steering_vectors
    from lens_pivotal.viz import save_figure

    alphas = parse_floats(args.alphas, "--alphas")
    refuse_existing(args.out, args.overwrite)
    model = load_model_from_args(args)
    probes = LayerProbes.load(args.probes, model=model) if args.probes else None
    block = args.layer if args.layer is not None else _default_block(model, probes)
    examples = probe_examples(model, load_pts(args.data), seed=args.seed)
    acts = examples.cache(model, layers=[block], progress=False)
    vectors = steering_vectors(acts, examples, method=args.method, sign=args.sign, model=model, layers=[block],
                               probes=_probe_of_block(probes, block) if args.method == "probe" else None)
    built_from = set(vectors.config.groups)
    problems = [problem for problem in problems_from_args(args) if problem.group not in built_from]
    if not problems:
        raise SystemExit("error: every problem was used to build the vector: raise --n-problems or change --dataset-id")
    settings = alpha_sweep(vectors, block, alphas, positions=args.positions, gate=(probes, threshold_from_args(args)) if probes else None)
    report = evaluate_steering(
        model, problems, settings, samples=args.samples, seed=args.seed, prompt=PROMPT_PRESETS[args.prompt],
        max_new_tokens=args.max_new_tokens, built_from=vectors.config.groups, n_bootstrap=args.n_bootstrap,
    )
    print(f"{vectors}\nsteering block {block}, positions {args.positions}\n{report.format_table()}")
    with atomic_dir(args.out, overwrite=args.overwrite) as out:
        vectors.save(out / "vectors")
        (out / "report.json").write_text(json.dumps({"block": block, "alphas": alphas, **report.to_dict()}, indent=1))
        save_figure(plot_alpha_sweep(report, alphas, title=f"{model.cfg.model_name}, block {block}"), out / "success_vs_alpha.png")
    print(f"\nwrote {args.out}/report.json, success_vs_alpha.png and vectors/")
    return 0


def _default_block(model: Any, probes: Any) -> int:
    if probes is not None and isinstance(probes.best_layer, int):
        return probes.best_layer
    return model.cfg.n_layers // 2


def _probe_of_block(probes: Any, block: int) -> Any:
    """The probe reading ``block``'s ``resid_post``, as single-layer probes."""
    if probes is None or resid_post_hook(block) not in probes.config.hook_names:
        raise SystemExit(f"error: --method probe needs --probes with a probe on {resid_post_hook(block)}")
    return probes[block]
