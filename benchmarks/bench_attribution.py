"""Integrated gradients over one text: all path points in one batched forward/backward against one per step.

``lp.attribute_tokens(..., method="integrated_gradients", steps=S)`` evaluates the gradient of the target at S points
on the straight line from the baseline embeddings to the text's embeddings. Batched: ``batch_size=S``, every point in
one forward/backward pass. Per step: ``batch_size=1``, S passes of one row each. Both compute the same points, so
their scores must agree to rounding; each one's completeness gap (``relative_delta``: ``|scores.sum() - (target -
baseline)| / |target - baseline|``) is printed too. They run in alternation in one process; the ratio reported is
the median of per-round ratios. Steps and baseline default to ``attribute_tokens``' own (``--steps``,
``--baseline``); ``bench_ig_completeness.py`` measures the gaps themselves.

The text is an arithmetic word problem ending in "29 + 5 = 3" (62 tokens for SmolLM2); the target is the
log-probability of the next digit "4" at the last position. ``--text-tokens N [N ...]`` gives one row per size: the
last N tokens of the text (repeated from the start when N is longer), so every row ends at the same target.

    python benchmarks/bench_attribution.py                                    # embedded SmolLM2, CPU, the whole text
    python benchmarks/bench_attribution.py --text-tokens 16 32 --repeats 3    # two shorter rows
    OMP_NUM_THREADS=1 python benchmarks/bench_attribution.py --text-tokens 8 16   # a CPU shared with other jobs
    python benchmarks/bench_attribution.py --steps 32 --baseline zero             # the settings before the "pad" default
    python benchmarks/bench_attribution.py --device cuda --dtype bfloat16 --text-tokens 62 256 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEASURED_BF16_PEAK_FLOPS, alternate, machine_description, today  # noqa: E402

import lens_pivotal as lp  # noqa: E402
from lens_pivotal.attributions.cli import parse_baseline  # noqa: E402
from lens_pivotal.attributions.token_attribution import DEFAULT_STEPS  # noqa: E402
from lens_pivotal.model import resolve_device, resolve_dtype  # noqa: E402

TEXT = (
    "Tom has 3 boxes of 12 apples. He gives 7 to Ann and buys 5 more. How many apples does he have now? "
    "3 * 12 = 36, 36 - 7 = 29, 29 + 5 = 3"
)
TARGET = "4"


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    """The TransformerLens model named on the command line."""
    if name == "embedded":
        return lp.embedded_model(device=device, dtype=dtype)
    return lp.load_model(name, device=device, dtype=dtype)


def text_ids(model, n_tokens: int | None) -> torch.Tensor:
    """The last ``n_tokens`` token ids of TEXT, the text repeated from its start when it is shorter (all when None)."""
    ids = lp.tokens.token_ids(model, TEXT)
    if n_tokens is None:
        return ids
    if n_tokens < 1:
        raise SystemExit(f"--text-tokens must be at least 1, got {n_tokens}")
    return ids.repeat(-(-n_tokens // len(ids)))[-n_tokens:]


def integrated_gradients(model, ids: torch.Tensor, steps: int, batch_size: int, baseline: str | int | None):
    """Integrated gradients of log P(TARGET) at the last position, large-delta warnings silenced (the delta is printed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lp.attribute_tokens(
            model, ids, target=TARGET, position=-1, method="integrated_gradients", baseline=baseline, steps=steps,
            batch_size=batch_size,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded (default), a hub id or a directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help="integrated-gradients points; the batched run does them in one pass")
    parser.add_argument("--baseline", default=None, help="'pad', 'zero' or a token id (default: attribute_tokens' own)")
    parser.add_argument("--text-tokens", type=int, nargs="+", default=None,
                        help="text sizes, one row each (default: the whole text)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    baseline = parse_baseline(args.baseline)

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    model = build_model(args.model, device, dtype)
    target_ids = lp.tokens.token_ids(model, TARGET, add_special_tokens=False)
    if len(target_ids) != 1:
        raise SystemExit(f"target {TARGET!r} is {len(target_ids)} tokens under this model's tokenizer, not one")
    # Matmul parameters (the embedding is a lookup); captum asks for input gradients only, so the backward pass is
    # one matmul per forward matmul: about 2 x 2 x n_params FLOPs per token and path point.
    n_params = sum(p.numel() for p in model.parameters()) - model.W_E.numel()
    flops_per_token_step = 4 * n_params

    print(f"machine: {machine_description(device)}; load average {os.getloadavg()[0]:.2f} before timing")
    print(f"model: {args.model} ({model.cfg.n_layers} blocks, d_model {model.cfg.d_model}, "
          f"{n_params / 1e6:.1f}M non-embedding parameters), dtype {dtype}, date {today()}")
    print(f"target: log P({TARGET!r}) (token {int(target_ids[0])}) at the last position, {args.baseline or 'default'} "
          f"baseline, {args.steps} steps, batched: batch_size={args.steps}, per step: batch_size=1; {args.repeats} rounds")
    rows = []
    for size in args.text_tokens or [None]:
        ids = text_ids(model, size)
        n_tokens = len(ids)
        # The untimed first round doubles as the correctness check.
        batched = integrated_gradients(model, ids, args.steps, args.steps, baseline)
        per_step = integrated_gradients(model, ids, args.steps, 1, baseline)
        max_diff = (batched.scores - per_step.scores).abs().max().item()
        timings = alternate(
            {
                "batched": lambda: integrated_gradients(model, ids, args.steps, args.steps, baseline),
                "per_step": lambda: integrated_gradients(model, ids, args.steps, 1, baseline),
            },
            repeats=args.repeats,
            device=device,
            warmup=0,
        )
        ratio = timings.ratio("per_step", "batched")
        tps = {name: n_tokens * args.steps / timings.median(name) for name in ("batched", "per_step")}
        print()
        print(f"text: {n_tokens} tokens, ends {''.join(batched.tokens[-8:])!r}; target {batched.target_value:+.4f}, "
              f"baseline {batched.baseline_value:+.4f}")
        print(f"max |batched - per step| score diff: {max_diff:.2e} (largest |score| {batched.scores.abs().max().item():.3g})")
        print(f"convergence delta: batched {batched.convergence_delta:+.4g} (completeness gap {batched.relative_delta:.1%}), "
              f"per step {per_step.convergence_delta:+.4g} ({per_step.relative_delta:.1%})")
        print(f"batched ({args.steps} points per pass): {timings.median('batched'):.3f} s  {tps['batched']:,.0f} tok/s")
        print(f"per step (1 point per pass):      {timings.median('per_step'):.3f} s  {tps['per_step']:,.0f} tok/s")
        print(f"speed-up (median of per-round per_step/batched): {ratio:.2f}x")
        peak = None
        if device.type == "cuda":
            peak = tps["batched"] * flops_per_token_step / MEASURED_BF16_PEAK_FLOPS
            print(f"~{flops_per_token_step / 1e9:.2f} GFLOP per token and step -> batched at {peak:.1%} of the measured "
                  f"bf16 peak ({MEASURED_BF16_PEAK_FLOPS / 1e12:.0f} TFLOP/s)")
        rows.append((n_tokens, timings, ratio, tps, peak, max_diff, batched, per_step))

    print(f"\nload average {os.getloadavg()[0]:.2f} after timing (1 minute; other jobs on the machine skew CPU numbers)")
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    model_name = "embedded SmolLM2" if args.model == "embedded" else args.model
    peak_header = " % bf16 peak |" if device.type == "cuda" else ""
    print("Markdown (header for a new table, then one row per text size):")
    print(f"| date | machine | model, dtype | text tokens × steps | batched | per step | ratio | batched tok/s | "
          f"per step tok/s |{peak_header} max abs score diff | convergence delta (gap) |")
    print("|" + "---|" * (11 + (device.type == "cuda")))
    for n_tokens, timings, ratio, tps, peak, max_diff, batched, per_step in rows:
        peak_cell = f" {peak:.1%} |" if peak is not None else ""
        print(f"| {today()} | {machine_description(device)} | {model_name}, {dtype_name} | {n_tokens} × {args.steps} | "
              f"{timings.median('batched'):.2f} s | {timings.median('per_step'):.2f} s | {ratio:.2f}× | "
              f"{tps['batched']:,.0f} | {tps['per_step']:,.0f} |{peak_cell} {max_diff:.1e} | "
              f"{batched.convergence_delta:+.3g} ({batched.relative_delta:.1%}) |")


if __name__ == "__main__":
    main()
