"""``lens-pivotal attribute``: call :func:`register` from the main parser."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import get_args

from lens_pivotal._io import atomic_write_text
from lens_pivotal.attributions.token_attribution import DEFAULT_STEPS, Baseline, Method
from lens_pivotal.cli.arguments import EMBEDDED, load_model_from_args, positive_int
from lens_pivotal.viz.tables import format_table


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``attribute`` command."""
    attribute = subparsers.add_parser(
        "attribute", help="which tokens drive a token's log-probability or a probe's logit (HTML view)",
        description="Attribute a target at one position of TEXT to its tokens (captum), print the strongest tokens and "
        "write a circuitsvis view. With --pts FILE --probes DIR, write a 'why is this token pivotal?' page for the "
        "first N rows instead.",
    )  # fmt: skip
    attribute.add_argument("text", nargs="?", default=None, help="the text (tokenized by the model's own tokenizer)")
    target = attribute.add_mutually_exclusive_group()
    target.add_argument("--target", default=None, help="a token (exactly one) whose log-probability is attributed")
    target.add_argument("--target-id", type=int, default=None, help="the same, as a token id")
    attribute.add_argument("--probes", default=None, help="a probes directory: attribute the probe's logit")
    attribute.add_argument("--layer", type=int, default=None, help="block of the probe (default: the best) or, with a "
                           "token, the block read through the logit lens")  # fmt: skip
    attribute.add_argument("--position", type=int, default=-1, help="token position of the target (default: -1)")
    attribute.add_argument("--method", choices=get_args(Method), default="integrated_gradients")
    attribute.add_argument("--baseline", default=None, help="'pad' (integrated gradients' default: the first, special and "
                           "chat-template tokens kept, every other one replaced by a space), 'zero' (occlusion's "
                           "default: all-zero embeddings) or a token id replacing every token")  # fmt: skip
    attribute.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                           help=f"integrated-gradients steps (default: {DEFAULT_STEPS})")  # fmt: skip
    attribute.add_argument("--batch-size", type=int, default=8, help="inputs per forward/backward (default: 8)")
    attribute.add_argument("--heads", action="store_true", help="also decompose the target over heads and source tokens")
    attribute.add_argument("--pts", default=None, help="PTS rows (.jsonl): write the pivot page (needs --probes)")
    attribute.add_argument("--n", type=int, default=5, help="PTS rows on the pivot page (default: 5)")
    attribute.add_argument("--out", default="attribution.html", help="HTML view to write (default: attribution.html)")
    attribute.add_argument("--model", default=None, help=f"hub id, directory or '{EMBEDDED}' (default: the probes' own "
                           f"model, else {EMBEDDED})")  # fmt: skip
    attribute.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    attribute.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    attribute.set_defaults(func=_cmd_attribute)


def _cmd_attribute(args: argparse.Namespace) -> int:
    from lens_pivotal.probes.layer_probes import LayerProbes

    if (args.text is None) == (args.pts is None):
        raise SystemExit("error: give either TEXT or --pts FILE")
    if args.pts is not None and args.probes is None:
        raise SystemExit("error: --pts needs --probes DIR (the page shows the probe's attribution beside the pivot's)")
    probes = LayerProbes.load(args.probes) if args.probes else None
    args.model = args.model or (probes.config.model_source or probes.config.model_name if probes else EMBEDDED)
    model = load_model_from_args(args)
    if probes is not None:
        probes.check_model(model)
    options = {"method": args.method, "baseline": parse_baseline(args.baseline), "steps": args.steps,
               "batch_size": args.batch_size}  # fmt: skip
    if args.pts is not None:
        return _pivot_page(model, args, probes, options)
    target = probes if probes is not None else (args.target_id if args.target_id is not None else args.target)
    return _one_text(model, args, target, options)


def _one_text(model, args: argparse.Namespace, target, options: dict) -> int:
    from lens_pivotal.attributions.heads import head_attributions
    from lens_pivotal.attributions.token_attribution import attribute_tokens
    from lens_pivotal.attributions.views import completeness_text, head_attribution_view, token_attribution_view

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attribution = attribute_tokens(model, args.text, target=target, position=args.position, layer=args.layer, **options)
    print(f"{attribution.method}: {attribution.target_label} at position {attribution.position} "
          f"({attribution.tokens[attribution.position]!r}) = {attribution.target_value:+.4f}")  # fmt: skip
    if attribution.convergence_delta is not None:
        print(f"{attribution.baseline!r} baseline {attribution.baseline_value:+.4f}; convergence delta "
              f"{attribution.convergence_delta:+.4f}; {completeness_text(attribution)}")  # fmt: skip
    for warning in caught:
        print(f"warning: {warning.message}")
    rows = [[str(position), repr(token), f"{score:+.4f}"] for position, token, score in attribution.top(10)]
    print(format_table(["position", "token", "score"], rows, align="rlr"))
    token_attribution_view(attribution).save(args.out)
    _write_json(Path(args.out).with_suffix(".json"), attribution.to_dict())
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    if args.heads:
        heads = head_attributions(model, args.text, target=target, position=args.position, layer=args.layer)
        heads_out = Path(args.out).with_name(Path(args.out).stem + "_heads.html")
        head_attribution_view(heads).save(heads_out)
        top = ", ".join(f"L{block}H{head} {value:+.3f}" for block, head, value in heads.top_heads(5))
        print(f"{heads.target_label} = {heads.target_value:+.4f}; top heads: {top}\nwrote {heads_out}")
    return 0


def _pivot_page(model, args: argparse.Namespace, probes, options: dict) -> int:
    from lens_pivotal.attributions.pivots import explain_pivots
    from lens_pivotal.attributions.views import pivots_view, with_gap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the page shows each attribution's completeness
        explanations = explain_pivots(model, args.pts, probes, n=args.n, layer=args.layer, **options)
    pivots_view(explanations).save(args.out)
    for explanation in explanations:
        row, probe, pivot = explanation.row, explanation.probe, explanation.pivot
        top = ", ".join(repr(token) for _, token, _ in probe.top(3))
        values = [with_gap(f"{item.target_label} {item.target_value:+.3f}", item) for item in (probe, pivot)]
        print(f"pivot {row.pivot_token!r} (prob_delta {row.prob_delta:+.2f}): {', '.join(values)}; "
              f"probe's top tokens {top}")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


def parse_baseline(text: str | None) -> Baseline | None:
    """A ``--baseline`` value as :func:`~lens_pivotal.attribute_tokens` takes it: ``None`` (its default), ``"pad"``,
    ``"zero"`` or a token id; anything else is a one-line SystemExit."""
    if text in (None, "pad", "zero"):
        return text
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"error: --baseline must be 'pad', 'zero' or a token id, got {text!r}") from None


def _write_json(path: Path, content: dict) -> None:
    atomic_write_text(path, json.dumps(content, indent=1))
