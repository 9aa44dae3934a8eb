"""``lens-pivotal patchscope decode|attribute``: call :func:`register` from the main parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lens_pivotal._io import atomic_write_text
from lens_pivotal.cli.arguments import EMBEDDED, add_model_arguments, load_model_from_args, parse_ints


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``patchscope`` command, with its ``decode`` and ``attribute`` subcommands."""

    patchscope = subparsers.add_parser(
        "patchscope", help="PatchScope: decode hidden states through patched prompts (next-token decoding, attributes)"
    )
    commands = patchscope.add_subparsers(dest="patchscope_command", required=True)

    decode = commands.add_parser(
        "decode",
        help="next-token decoding per layer: identity patchscope vs logit lens and affine lens (P@1, surprisal)",
        description="Patch each prompt's last-token state at every layer into the identity prompt and compare the "
        "decoded top-1 with the model's own prediction. Writes decoding.json and decoding.png under --out.",
    )
    add_model_arguments(decode, EMBEDDED)
    decode.add_argument("--prompts", default=None, help="a text file, one prompt per line (default: built-in relation prompts)")
    decode.add_argument("--n-prompts", type=int, default=60, help="how many built-in prompts without --prompts (default: 60)")
    decode.add_argument("--layers", default=None, help="comma-separated source blocks (default: all)")
    decode.add_argument("--baselines", default="logit_lens,affine", help="comma-separated, from logit_lens,affine ('' for none)")
    decode.add_argument("--batch-size", type=int, default=128, help="(prompt, layer) rows per forward pass (default: 128)")
    decode.add_argument("--out", default="patchscope_out", help="output folder (default: patchscope_out)")
    decode.set_defaults(func=_cmd_decode)

    attribute = commands.add_parser(
        "attribute",
        help="attribute extraction over an LRE relation: accuracy per (source layer, target layer)",
        description="Patch each subject's state into the relation's placeholder prompt, generate greedily and check "
        "whether the object appears (spaces and case ignored). Writes attribute_<relation>.json/.png under --out.",
    )
    add_model_arguments(attribute, EMBEDDED)
    attribute.add_argument("--relation", required=False, default="country_capital_city", help="relation name (see --list)")
    attribute.add_argument("--list", action="store_true", help="list the shipped relations and exit")
    attribute.add_argument("--source-layers", default=None, help="comma-separated source blocks ℓ (default: all)")
    attribute.add_argument("--target-layers", default=None, help="comma-separated target blocks ℓ* (default: all)")
    attribute.add_argument("--max-samples", type=int, default=20, help="samples of the relation to use (default: 20)")
    attribute.add_argument("--max-new-tokens", type=int, default=20, help="greedy generation length (default: 20)")
    attribute.add_argument("--batch-size", type=int, default=64, help="patched rows per generate call (default: 64)")
    attribute.add_argument("--out", default="patchscope_out", help="output folder (default: patchscope_out)")
    attribute.set_defaults(func=_cmd_attribute)


def _cmd_decode(args: argparse.Namespace) -> int:
    from lens_pivotal.patchscope.decoding import next_token_decoding
    from lens_pivotal.patchscope.demo import save_decoding
    from lens_pivotal.patchscope.relations import relation_prompts

    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts file {path} does not exist")
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = relation_prompts(args.n_prompts)
    layers = parse_ints(args.layers, "--layers") if args.layers else None
    baselines = tuple(name for name in args.baselines.split(",") if name.strip())
    model = load_model_from_args(args)
    result = next_token_decoding(model, prompts, layers=layers, baselines=baselines, batch_size=args.batch_size)
    json_path, png_path = save_decoding(result, args.out)
    print(result.table())
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def _cmd_attribute(args: argparse.Namespace) -> int:
    from lens_pivotal.patchscope.attributes import attribute_extraction
    from lens_pivotal.patchscope.plots import plot_attribute_heatmap
    from lens_pivotal.patchscope.relations import list_relations, load_relation
    from lens_pivotal.viz import save_figure

    if args.list:
        print("\n".join(list_relations()))
        return 0
    relation = load_relation(args.relation)
    model = load_model_from_args(args)
    result = attribute_extraction(
        model, relation,
        source_layers=parse_ints(args.source_layers, "--source-layers") if args.source_layers else None,
        target_layers=parse_ints(args.target_layers, "--target-layers") if args.target_layers else None,
        max_samples=args.max_samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )
    out = Path(args.out)
    atomic_write_text(out / f"attribute_{relation.name}.json", json.dumps(result.to_dict(), indent=1))
    save_figure(plot_attribute_heatmap(result), out / f"attribute_{relation.name}.png")
    known = int(result.plain_correct.sum())
    print(f"{relation.name}: target prompt {relation.target_prompt!r}; plain prompt correct on {known}/{len(result.subjects)}")
    print(f"best accuracy {result.accuracy.max():.2f}; accuracy per (source layer row, target layer column):")
    print(json.dumps(dict(zip(map(str, result.source_layers), [[round(v, 2) for v in row] for row in result.accuracy.tolist()]))))
    print(f"wrote {out}/attribute_{relation.name}.json and .png")
    return 0
