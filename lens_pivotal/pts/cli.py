"""``lens-pivotal pts search|show``: call :func:`register` from the main parser."""

from __future__ import annotations

import argparse
from typing import Any

from lens_pivotal.cli.arguments import EMBEDDED, add_model_arguments, add_problem_arguments, load_model_from_args, problems_from_args
from lens_pivotal.pts.prompts import PROMPT_PRESETS
from lens_pivotal.pts.search import SearchConfig

DEFAULTS = SearchConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pts`` command, with its ``search`` and ``show`` subcommands."""
    pts = subparsers.add_parser("pts", help="Pivotal Token Search: find tokens that swing P(correct answer); inspect PTS files")
    commands = pts.add_subparsers(dest="pts_command", required=True)
    _add_search(commands)
    _add_export(commands)
    show = commands.add_parser(
        "show", help="summarise a PTS file: rows, problems, sign balance, prob_delta histogram",
        description="Load a PTS JSONL/parquet file or hub id (v1 or v2 schema), validate it and print a summary.",
    )
    show.add_argument("source", help="a .jsonl or .parquet file, or a hub id such as codelion/Qwen3-0.6B-pts (online)")
    show.add_argument("--lenient", action="store_true", help="skip invalid rows instead of stopping at the first")
    show.add_argument("--bins", type=int, default=10, help="histogram bins over [-1, 1] (default: 10)")
    show.set_defaults(func=_cmd_show)


def _add_search(commands: argparse._SubParsersAction) -> None:

    search = commands.add_parser(
        "search", help="run Pivotal Token Search on a model and write PTS v1 JSONL rows (resumable)",
        description="Estimate P(success | prefix) by sampling, keep problems with baseline success in "
        "[--min-prob, --max-prob], and bisect sampled solutions for single tokens that move it by at least "
        "--prob-threshold. Rerunning with the same --out and settings resumes where it stopped.",
    )
    add_model_arguments(search, EMBEDDED)
    search.add_argument("--out", required=True, help="output JSONL (NAME.progress.jsonl is kept next to it)")
    add_problem_arguments(search)
    sampling = search.add_argument_group("search settings (defaults from codelion/pts)")
    sampling.add_argument("--num-samples", type=int, default=DEFAULTS.num_samples)
    sampling.add_argument("--prob-threshold", type=float, default=DEFAULTS.prob_threshold)
    sampling.add_argument("--min-prob", type=float, default=DEFAULTS.min_prob)
    sampling.add_argument("--max-prob", type=float, default=DEFAULTS.max_prob)
    sampling.add_argument("--temperature", type=float, default=DEFAULTS.sampling.temperature)
    sampling.add_argument("--top-p", type=float, default=DEFAULTS.sampling.top_p)
    sampling.add_argument("--top-k", type=int, default=DEFAULTS.sampling.top_k)
    sampling.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    sampling.add_argument("--solutions-per-problem", type=int, default=DEFAULTS.solutions_per_problem)
    sampling.add_argument("--seed", type=int, default=DEFAULTS.seed)
    search.add_argument("--prompt", choices=sorted(PROMPT_PRESETS), default="plain",
                        help="prompt preset; arithmetic-one-shot adds a worked example (default: plain)")
    search.add_argument("--no-chat-template", action="store_true", help="plain text even if the tokenizer has a chat template")
    search.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="rollout sampler (vllm must be installed)")
    search.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    search.set_defaults(func=_cmd_search)


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="PTS rows as DPO pairs with measured counterparts, or as one residual vector per pivot",
        description="--format dpo: {prompt, chosen, rejected, metadata} pairs; the counterpart of each pivot is the "
        "alternative next token whose P(success), measured by rollouts, differs from the pivot's by at least "
        "--prob-threshold (rows without one are left out and counted). The problems (for their answers) are given as "
        "for 'pts search'. --format steering: the residual at the pivot position and --layer, per row.",
    )
    add_model_arguments(export, EMBEDDED)
    export.add_argument("--data", required=True, help="PTS rows: a file, a shipped name or a hub id")
    export.add_argument("--format", choices=("dpo", "steering"), required=True)
    export.add_argument("--out", required=True, help="output JSONL")
    export.add_argument("--layer", type=int, default=None, help="block of the residual (steering; default: the middle)")
    add_problem_arguments(export)
    counterparts = export.add_argument_group("counterpart measurement (dpo)")
    counterparts.add_argument("--candidates", type=int, default=5, help="alternative tokens tried per row (default: 5)")
    counterparts.add_argument("--num-samples", type=int, default=16, help="rollouts per estimate (default: 16)")
    counterparts.add_argument("--max-new-tokens", type=int, default=64, help="tokens per rollout (default: 64)")
    counterparts.add_argument("--prob-threshold", type=float, default=DEFAULTS.prob_threshold)
    counterparts.add_argument("--seed", type=int, default=0)
    export.set_defaults(func=_cmd_export)


def _backend(args: argparse.Namespace, model: Any) -> Any:
    if args.backend == "hf":
        return None
    from lens_pivotal.pts.rollouts import SamplingConfig, VLLMRollouts, stop_token_ids

    path = args.model
    if path == "embedded":
        from lens_pivotal.embedded import embedded_model_dir

        path = str(embedded_model_dir())
    sampling = SamplingConfig(args.temperature, args.top_p, args.top_k)
    # The TransformerLens model stays loaded for its tokenizer, so vLLM must not claim the whole GPU.
    return VLLMRollouts(path, stop_token_ids(model.tokenizer, model.original_model), sampling, dtype=args.dtype or "auto",
                        gpu_memory_utilization=0.6)


def _cmd_search(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from lens_pivotal.pts.search import search_pivotal_tokens

    if args.threads:
        torch.set_num_threads(args.threads)
    problems = problems_from_args(args)
    prompt = PROMPT_PRESETS[args.prompt]
    if args.no_chat_template:
        prompt = dataclasses.replace(prompt, chat_template=False)
    model = load_model_from_args(args)
    rows = search_pivotal_tokens(
        model, problems, num_samples=args.num_samples, prob_threshold=args.prob_threshold, min_prob=args.min_prob,
        max_prob=args.max_prob, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        max_new_tokens=args.max_new_tokens, seed=args.seed, solutions_per_problem=args.solutions_per_problem,
        prompt=prompt, backend=_backend(args, model), out=args.out,
    )
    found = sum(1 for _ in rows)
    print(f"{found} new pivotal tokens from {len(problems)} problems; all rows are in {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from lens_pivotal._io import atomic_write_text
    from lens_pivotal.pts.export import CounterpartSearch, dpo_pairs, steering_records
    from lens_pivotal.pts.rollouts import SamplingConfig
    from lens_pivotal.pts.schema import load_pts
    from lens_pivotal.pts.search import hf_backend

    rows = load_pts(args.data).rows
    model = load_model_from_args(args)
    if args.format == "steering":
        records = steering_records(model, rows, model.cfg.n_layers // 2 if args.layer is None else args.layer)
        skipped = 0
    else:
        search = CounterpartSearch(args.candidates, args.num_samples, args.max_new_tokens, args.prob_threshold, args.seed)
        export = dpo_pairs(model, rows, problems_from_args(args), hf_backend(model, SamplingConfig()), search=search)
        records, skipped = export.pairs, export.skipped
    atomic_write_text(args.out, "".join(json.dumps(record) + "\n" for record in records))
    print(f"wrote {len(records)} {args.format} records to {args.out}; {skipped} rows without a measured counterpart left out")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from lens_pivotal.pts.schema import load_pts
    from lens_pivotal.pts.summary import summarize

    print(summarize(load_pts(args.source, strict=not args.lenient), bins=args.bins))
    return 0
