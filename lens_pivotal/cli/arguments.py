"""Arguments every command shares: which model to load, and integer lists."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from transformer_lens.model_bridge import TransformerBridge

from lens_pivotal.embedded import embedded_model
from lens_pivotal.model import load_model

EMBEDDED = "embedded"


def add_model_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--model``, ``--device`` and ``--dtype``, as every command that loads a model takes them."""
    parser.add_argument(
        "--model", default=default, help=f"hub id, local directory, or '{EMBEDDED}' for the offline SmolLM2 (default: {default})"
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def load_model_from_args(args: argparse.Namespace) -> TransformerBridge:
    """The model named by :func:`add_model_arguments`' arguments (``embedded``: the offline SmolLM2)."""
    if args.model == EMBEDDED:
        return embedded_model(device=args.device, dtype=args.dtype)
    return load_model(args.model, device=args.device, dtype=args.dtype)


def parse_ints(text: str, what: str) -> list[int]:
    """``"0,6,12"`` as ``[0, 6, 12]``; anything else exits with an error naming the option ``what``."""
    return _parse_list(text, what, int, "integers")


def parse_floats(text: str, what: str) -> list[float]:
    """``"1,2.5,4"`` as ``[1.0, 2.5, 4.0]``; anything else exits with an error naming the option ``what``."""
    return _parse_list(text, what, float, "numbers")


def _parse_list(text: str, what: str, convert: Callable[[str], Any], noun: str) -> list[Any]:
    try:
        return [convert(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"error: {what} must be comma-separated {noun}, got {text!r}") from None
