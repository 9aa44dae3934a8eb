"""Arguments the commands share: which model to load, which problems to use, and number lists."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal.embedded import embedded_model
from lens_pivotal.model import load_model
from lens_pivotal.pts import problems

EMBEDDED = "embedded"


def add_model_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--model``, ``--device`` and ``--dtype``, as every command that loads a model takes them."""
    parser.add_argument(
        "--model", default=default, help=f"hub id, local directory, or '{EMBEDDED}' for the offline SmolLM2 (default: {default})"
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    parser.add_argument("--device-map", default=None,
                        help="accelerate device map, e.g. 'auto', to split a large model over the GPUs (instead of --device)")


def load_model_from_args(args: argparse.Namespace) -> TransformerBridge:
    """The model named by :func:`add_model_arguments`' arguments (``embedded``: the offline SmolLM2)."""
    device_map = getattr(args, "device_map", None)  # commands that define their own --model have no --device-map
    if args.model == EMBEDDED:
        if device_map is not None:
            raise ValueError("--device-map is for hub or local models; the embedded SmolLM2 fits anywhere (use --device)")
        return embedded_model(device=args.device, dtype=args.dtype)
    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=device_map)


def parse_ints(text: str, what: str) -> list[int]:
    """``"0,6,12"`` as ``[0, 6, 12]``; anything else exits with an error naming the option ``what``."""
    return _parse_list(text, what, int, "integers")


def parse_floats(text: str, what: str) -> list[float]:
    """``"1,2.5,4"`` as ``[1.0, 2.5, 4.0]``; anything else exits with an error naming the option ``what``."""
    return _parse_list(text, what, float, "numbers")


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _parse_list(text: str, what: str, convert: Callable[[str], Any], noun: str) -> list[Any]:
    try:
        return [convert(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"error: {what} must be comma-separated {noun}, got {text!r}") from None


PROBLEM_SOURCES = "'arithmetic' (built-in generator), 'gsm8k' (online, through datasets) or a JSONL file of {question, answer}"


def add_problem_arguments(parser: argparse.ArgumentParser) -> None:
    """``--problems`` and the built-in arithmetic generator's options (read back by :func:`problems_from_args`)."""
    parser.add_argument("--problems", default="arithmetic", help=f"{PROBLEM_SOURCES} (default: arithmetic)")
    group = parser.add_argument_group("built-in arithmetic problems")
    group.add_argument("--n-problems", type=int, default=None,
                       help="how many problems (default: 100 generated; all of gsm8k or of a JSONL file)")
    group.add_argument("--n-operations", type=int, default=1, help="operations per problem (default: 1)")
    group.add_argument("--max-operations", type=int, default=None,
                       help="draw each problem's operation count from N-OPERATIONS..this (default: exactly N-OPERATIONS)")
    group.add_argument("--dataset-id", default=None,
                       help="dataset_id of the problems (default: lens_pivotal/arithmetic, or a JSONL file's name)")
    group.add_argument("--operand-range", default="2,20", help="LOW,HIGH inclusive (default: 2,20)")
    group.add_argument("--operations", default="+-*", help="any of + - * (default: +-*)")
    group.add_argument("--problem-seed", type=int, default=0, help="generator seed (default: 0)")
    parser.add_argument("--gsm8k-split", default="test", help="GSM8K split (default: test)")


def _operand_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--operand-range must be LOW,HIGH (two integers), got {text!r}") from None
    return low, high


def problems_from_args(args: argparse.Namespace) -> list[Any]:
    """The problems :func:`add_problem_arguments`' options name."""
    if args.problems == "arithmetic":
        config = problems.ArithmeticConfig(
            n_problems=args.n_problems or 100, n_operations=args.n_operations, operand_range=_operand_range(args.operand_range),
            operations=tuple(args.operations), seed=args.problem_seed, max_operations=args.max_operations,
            dataset_id=args.dataset_id or problems.ARITHMETIC_DATASET_ID,
        )
        return problems.arithmetic_problems(config)
    if args.problems == "gsm8k":
        return problems.gsm8k_problems(args.gsm8k_split, limit=args.n_problems)
    return problems.load_problems_jsonl(args.problems, dataset_id=args.dataset_id)[: args.n_problems]
