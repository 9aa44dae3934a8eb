"""Completeness of integrated gradients per baseline and step count: the table behind ``attribute_tokens``' defaults.

The completeness gap of an attribution is ``|scores.sum() - (target - baseline target)| / |target - baseline
target|`` (``TokenAttribution.relative_delta``): the fraction of the change from the baseline input to the real one
that the scores leave unexplained. Integrated gradients with Gauss-Legendre points have a gap of 0 in the limit of
many points; this measures how far from it each baseline is at each step count.

Targets, on the embedded SmolLM2-135M-Instruct unless ``--model`` says otherwise:

- ``plain``: log P("7") after the plain text "Tom has 3 apples and buys 4 more, so he has ", and a random direction
  (seed 0) dotted with block 5's output there (what a probe reads);
- ``chat``: the same two after the same problem in the chat template, at the start of the assistant's answer;
- ``pivot token`` and ``pivot probe``: ``make demo``'s own held-out pivot (the first positive row of the probes'
  held-out groups that maps, as ``lens_pivotal.attributions.demo`` picks it), the pivot token's log-probability
  and the probe logit at the probes' best block; only with ``--probes`` (``demo_out/probes/probes`` after ``make
  demo``, or ``lens-pivotal demo --out DIR``'s ``DIR/probes/probes``).

    python benchmarks/bench_ig_completeness.py --probes demo_out/probes/probes
    python benchmarks/bench_ig_completeness.py --steps 8 16 --baselines pad zero 2   # a token id is a baseline too

``pad-eos`` is the ``"pad"`` baseline with the EOS token (SmolLM2's pad token) as its filler instead of the space.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, today  # noqa: E402

import lens_pivotal as lp  # noqa: E402
from lens_pivotal.attributions import token_attribution  # noqa: E402
from lens_pivotal.attributions.demo import heldout_pivots  # noqa: E402
from lens_pivotal.attributions.pivots import pivot_contexts  # noqa: E402
from lens_pivotal.model import resolve_device, resolve_dtype  # noqa: E402
from lens_pivotal.tokens import own_tokenizer  # noqa: E402

PLAIN = "Tom has 3 apples and buys 4 more, so he has "
CHAT = (
    "<|im_start|>user\nTom has 3 apples and buys 4 more. How many apples does he have?<|im_end|>\n"
    "<|im_start|>assistant\nHe has "
)
EOS_PAD = "pad-eos"  # the "pad" baseline with EOS (SmolLM2's pad token, <|im_end|>) in place of the space filler


@dataclass
class Case:
    """One text and target to attribute; ``kwargs`` go to ``lp.attribute_tokens`` (``target``, ``layer``)."""

    name: str
    text: str | list[int]
    kwargs: dict[str, Any]


def cases(model: Any, probes_dir: str | None) -> list[Case]:
    """The plain and chat texts, and with ``probes_dir`` the demo's held-out pivot (token and probe targets)."""
    direction = ("blocks.5.hook_resid_post", torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)))
    targets = ((', log P("7")', "7"), (", random direction, block 5", direction))
    found = [
        Case(f"{name}{suffix}", text, {"target": target})
        for name, text in (("plain", PLAIN), ("chat", CHAT))
        for suffix, target in targets
    ]
    if probes_dir is not None:
        probes = lp.LayerProbes.load(probes_dir, model=model)
        [(row, ids)] = pivot_contexts(model, heldout_pivots(probes), 1)
        found.append(Case(f"pivot token {row.pivot_token!r}", ids, {"target": row.pivot_token_id}))
        probe = {"target": probes, "layer": probes.best_layer}
        found.append(Case(f"pivot probe, block {probes.best_layer}", ids, probe))
    return found


def attribution(model: Any, case: Case, baseline: str | int, steps: int, batch_size: int) -> lp.TokenAttribution:
    """One integrated-gradients attribution, its large-gap warning silenced (the gap is the measurement);
    ``EOS_PAD`` is the ``"pad"`` baseline with its filler patched to the EOS token."""
    eos = own_tokenizer(model).eos_token_id
    eos_filler = mock.patch.object(token_attribution, "pad_filler", lambda model: eos)
    filler = eos_filler if baseline == EOS_PAD else nullcontext()
    with warnings.catch_warnings(), filler:
        warnings.simplefilter("ignore", UserWarning)
        return lp.attribute_tokens(
            model, case.text, baseline="pad" if baseline == EOS_PAD else baseline, steps=steps, batch_size=batch_size,
            **case.kwargs,
        )  # fmt: skip


def table_row(model: Any, case: Case, baseline: str | int, all_steps: list[int], batch_size: int) -> str:
    """One Markdown row: the case, its tokens (kept by the baseline), the change the scores must sum to, the gaps."""
    results = [attribution(model, case, baseline, steps, batch_size) for steps in all_steps]
    first = results[0]
    gaps = " | ".join(f"{result.relative_delta:.1%}" for result in results)
    change = first.target_value - first.baseline_value
    return f"| {case.name} | {len(first.tokens)} ({len(first.kept_positions)}) | {baseline} | {change:+.3f} | {gaps} |"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded (default), a hub id or a directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--probes", default=None, help="trained probes (make demo's); adds the demo's held-out pivot")
    parser.add_argument("--baselines", nargs="+", default=["pad", EOS_PAD, "zero"],
                        help=f"'pad', '{EOS_PAD}', 'zero' or token ids")
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    baselines = [name if name in ("pad", EOS_PAD, "zero") else int(name) for name in args.baselines]
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    if args.model == "embedded":
        model = lp.embedded_model(device=device, dtype=dtype)
    else:
        model = lp.load_model(args.model, device=device, dtype=dtype)
    print(f"machine: {machine_description(device)}; load average {os.getloadavg()[0]:.2f}; date {today()}")
    print(f"model: {args.model} ({model.cfg.model_name}), dtype {dtype}; batch_size {args.batch_size}")
    steps_header = " | ".join(f"{steps} steps" for steps in args.steps)
    lines = [f"| text, target | tokens (kept) | baseline | target - baseline target | {steps_header} |",
             "|" + "---|" * (4 + len(args.steps))]  # fmt: skip
    start = time.perf_counter()
    for case in cases(model, args.probes):
        for baseline in baselines:
            lines.append(table_row(model, case, baseline, args.steps, args.batch_size))
            print(lines[-1], flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s; Markdown:\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
