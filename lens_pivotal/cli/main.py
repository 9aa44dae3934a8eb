"""The ``lens-pivotal`` command line: the main parser, ``demo`` and ``cache``; each subpackage registers its own
commands (``patchscope``, ``pts``, ``probe``, ``attribute``, ``steer``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from lens_pivotal._io import jsonl_lines
from lens_pivotal.attributions.cli import register as register_attributions
from lens_pivotal.attributions.token_attribution import DEFAULT_STEPS
from lens_pivotal.cli.arguments import EMBEDDED, add_model_arguments, load_model_from_args, parse_ints, positive_int
from lens_pivotal.distributed import init_from_environment, leave_process_group
from lens_pivotal.patchscope.cli import register as register_patchscope
from lens_pivotal.probes.cli import register as register_probes
from lens_pivotal.pts.cli import register as register_pts
from lens_pivotal.steering.cli import register as register_steering


def _read_inputs(path: Path, text_field: str, positions_field: str, default_positions: list[int]):
    if not path.is_file():
        raise SystemExit(f"error: input file {path} does not exist")
    if path.suffix != ".jsonl":
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return texts, [default_positions] * len(texts)
    texts, positions = [], []
    for line in jsonl_lines(path):
        if line.error is not None:
            raise SystemExit(f"error: {line.describe_error()}")
        row = line.value
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise SystemExit(f"error: {line.where} has no string field {text_field!r}")
        texts.append(row[text_field])
        positions.append(row.get(positions_field, default_positions))
    return texts, positions


def _cmd_demo(args: argparse.Namespace) -> int:
    from lens_pivotal._io import atomic_dir
    from lens_pivotal.attributions.demo import attribution_demo
    from lens_pivotal.demo import run_demo
    from lens_pivotal.patchscope.demo import decoding_demo
    from lens_pivotal.probes.workflow import probe_demo

    model = load_model_from_args(args)
    with atomic_dir(args.out, overwrite=args.overwrite) as out:
        print(f"Logit lens of {model.cfg.model_name} ({model.cfg.n_layers} blocks): top next token at the last position")
        print(run_demo(model, out))
        print(f"\nwrote {args.out}/logit_lens.txt and logit_lens.json\n")
        print(decoding_demo(model, out))
        print(f"\nPivotal-token probes on the shipped PTS dataset ({model.cfg.model_name})")
        print(probe_demo(model, out / "probes", model_source=args.model))
        print(f"\nwrote the probes, metrics.json, plots and HTML views to {Path(args.out) / 'probes'}/")
        print("\nWhy is this token pivotal? Token attributions of the best layer's probe and of the pivot token")
        print(attribution_demo(model, out / "probes" / "probes", out, steps=args.steps))
        print(f"wrote {Path(args.out) / 'why_pivotal.html'}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from lens_pivotal.model import resolve_dtype
    from lens_pivotal.resid.cache import cache_resid_post

    texts, positions = _read_inputs(Path(args.input), args.text_field, args.positions_field, parse_ints(args.positions, "--positions"))
    model = load_model_from_args(args)
    layers = parse_ints(args.layers, "--layers") if args.layers else None
    store = cache_resid_post(
        model, texts, positions, layers=layers, embeddings=args.embeddings, batch_size=args.batch_size,
        dtype=resolve_dtype(args.store_dtype), out=args.out, shard_texts=args.shard_texts, overwrite=args.overwrite,
    )
    print(store)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="lens-pivotal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="logit-lens table of a few prompts on the embedded model (offline)")
    add_model_arguments(demo, EMBEDDED)
    demo.add_argument("--out", default="demo_out", help="folder for the files it writes (default: demo_out)")
    demo.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    demo.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                      help=f"integrated-gradients steps of the attributions (default: {DEFAULT_STEPS})")  # fmt: skip
    demo.set_defaults(func=_cmd_demo)

    cache = commands.add_parser("cache", help="cache resid_post of texts at chosen positions into an on-disk store")
    add_model_arguments(cache, EMBEDDED)
    cache.add_argument("input", help="a .txt file (one text per line) or .jsonl file (one object per line)")
    cache.add_argument("--out", required=True, help="store directory; rerunning resumes an interrupted store")
    cache.add_argument("--overwrite", action="store_true",
                       help="discard a store in --out made from other weights, hooks or inputs (default: refuse)")
    cache.add_argument("--positions", default="-1", help="positions for texts without their own (default: -1)")
    cache.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    cache.add_argument("--positions-field", default="positions", help="JSONL field holding positions (default: positions)")
    cache.add_argument("--layers", default=None, help="comma-separated blocks (default: all)")
    cache.add_argument("--embeddings", action="store_true", help="also store the embedding stream, first")
    cache.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default: 16)")
    cache.add_argument("--shard-texts", type=int, default=512,
                       help="texts per shard file; under torchrun, shards are dealt out to the processes (default: 512)")
    cache.add_argument("--store-dtype", default="float32", help="dtype of stored activations (default: float32)")
    cache.set_defaults(func=_cmd_cache)

    register_patchscope(commands)
    register_pts(commands)
    register_probes(commands)
    register_steering(commands)
    register_attributions(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lens-pivotal`` and ``python -m lens_pivotal``; under ``torchrun`` each process joins the
    process group first and, with CUDA, takes the GPU its ``LOCAL_RANK`` names unless ``--device`` says otherwise."""
    args = build_parser().parse_args(argv)
    device = init_from_environment()
    if device is not None and getattr(args, "device", "unset") is None and getattr(args, "device_map", None) is None:
        args.device = str(device)
    try:
        return args.func(args)
    except (ValueError, IndexError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if device is not None:
            leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
