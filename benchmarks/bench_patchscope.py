"""Next-token decoding (identity patchscope at every layer) against the PatchScope reimplementation's method.

The full-forward method (the PatchScope reimplementation's) runs, for every layer and every batch of prompts, a full forward of the identity prompt patched
at that layer. Ours puts (prompt, layer) rows of all layers in one batch (a hook per layer writes its own
rows), runs the identity prompt's prefix once and reuses its KV cache, so each row costs one token.
Both read the same source states and must give identical top-1 tokens, P@1 and surprisal. They run in
alternation in one process; the ratio reported is the median of per-round ratios.

    python benchmarks/bench_patchscope.py                                      # embedded SmolLM2, CPU
    python benchmarks/bench_patchscope.py --model qwen3-0.6b-random --device cuda --dtype bfloat16 --n-prompts 512

``--json PATH`` also appends the result to PATH as one JSON line (``benchmarks/gpu_suite.sh``), throughput counted
as (prompt, layer) rows decoded per second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Timings, alternate, block_flops_per_token, fraction_of_peak, machine_description, result_record, today, write_result,
)

import lens_pivotal as lp  # noqa: E402
from lens_pivotal.model import resolve_device, resolve_dtype  # noqa: E402
from lens_pivotal.patchscope import IDENTITY_PROMPT, next_token_decoding, patch_hook, relation_prompts  # noqa: E402

RANDOM_QWEN3 = "qwen3-0.6b-random"


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    """The TransformerLens model named on the command line."""
    if name == RANDOM_QWEN3:
        from lens_pivotal.testing import random_qwen3_0_6b

        hf_model, tokenizer = random_qwen3_0_6b(dtype=dtype, device=device)
        return lp.load_model(RANDOM_QWEN3, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype)
    if name == "embedded":
        from lens_pivotal.embedded import embedded_model

        return embedded_model(device=device, dtype=dtype)
    return lp.load_model(name, device=device, dtype=dtype)


@torch.inference_mode()
def full_forward_decoding(model, prompts: list[str], batch_size: int, source_batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top ids [layers, prompts], P@1 [layers], surprisal [layers]): one patched full forward per layer per batch."""
    states = lp.cache_resid_post(model, prompts, [-1] * len(prompts), batch_size=source_batch_size, progress=False)
    own_logp = torch.log_softmax(lp.logit_lens(model, states[-1]).float(), dim=-1).cpu()
    target = lp.tokens.token_ids(model, IDENTITY_PROMPT)[None]  # the package's rule, as next_token_decoding reads it
    tops = torch.empty(model.cfg.n_layers, len(prompts), dtype=torch.long)
    for layer in range(model.cfg.n_layers):
        for start in range(0, len(prompts), batch_size):
            vectors = states[layer, start : start + batch_size]
            hook = patch_hook(vectors, -1)
            with model.hooks(fwd_hooks=[(lp.resid_post_hook(layer), hook)]):
                logits = model(target.expand(len(vectors), -1))
            tops[layer, start : start + len(vectors)] = logits[:, -1].argmax(dim=-1).cpu()
    hits = (tops == own_logp.argmax(dim=-1)).float()
    surprisal = -own_logp.gather(1, tops.T).T
    return tops, hits.mean(1), surprisal.mean(1)


def ours(model, prompts: list[str], batch_size: int, source_batch_size: int):
    """Our next_token_decoding, identity patchscope only."""
    return next_token_decoding(
        model, prompts, baselines=(), batch_size=batch_size, source_batch_size=source_batch_size, progress=False
    )


def json_record(model, prompts: list[str], device: torch.device, dtype: torch.dtype, timings: Timings, check: str) -> dict:
    """The ``--json`` record: (prompt, layer) rows per second, and the share of the bf16 peak ours reaches.

    Ours runs every prompt's tokens (the source states), the identity prompt's prefix once and one token per row,
    all through every block; FLOPs count those tokens through the blocks only.
    """
    rows = len(prompts) * model.cfg.n_layers
    tokens = sum(len(lp.tokens.token_ids(model, prompt)) for prompt in prompts)
    tokens += len(lp.tokens.token_ids(model, IDENTITY_PROMPT)) - 1 + rows
    seconds = timings.median("ours")
    return result_record(
        "bench_patchscope: (prompt, layer) rows/s vs a full forward per layer", device, dtype,
        ours_tok_s=rows / seconds, baseline_tok_s=rows / timings.median("full_forward"),
        ratio=timings.ratio("full_forward", "ours"),
        fraction_of_peak=fraction_of_peak(tokens * block_flops_per_token(model.blocks) / seconds, device), check=check,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help=f"embedded (default), {RANDOM_QWEN3}, a hub id or a directory")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="full forward: prompts per patched full forward")
    parser.add_argument("--our-batch-size", type=int, default=512, help="ours: (prompt, layer) rows per forward (one token each)")
    parser.add_argument("--source-batch-size", type=int, default=64, help="both: prompts per source forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", default=None, help="append the result to PATH as one JSON line")
    args = parser.parse_args()

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    model = build_model(args.model, device, dtype)
    prompts = relation_prompts(args.n_prompts, seed=0)

    result = ours(model, prompts, args.our_batch_size, args.source_batch_size)
    reference_tops, reference_p1, reference_surprisal = full_forward_decoding(model, prompts, args.batch_size, args.source_batch_size)
    same_tops = result.top_tokens["patchscope"] == [model.tokenizer.batch_decode(row.reshape(-1, 1).tolist()) for row in reference_tops]
    p1_diff = (result.precision_at_1["patchscope"] - reference_p1).abs().max().item()
    surprisal_diff = (result.surprisal["patchscope"] - reference_surprisal).abs().max().item()

    timings = alternate(
        {
            "full_forward": lambda: full_forward_decoding(model, prompts, args.batch_size, args.source_batch_size),
            "ours": lambda: ours(model, prompts, args.our_batch_size, args.source_batch_size),
        },
        repeats=args.repeats,
        device=device,
    )
    n_target = len(lp.tokens.token_ids(model, IDENTITY_PROMPT))
    print(f"machine: {machine_description(device)}")
    print(f"model: {args.model} ({model.cfg.n_layers} blocks, d_model {model.cfg.d_model}), dtype {dtype}, date {today()}")
    print(f"inputs: {len(prompts)} prompts x {model.cfg.n_layers} layers, identity prompt of {n_target} tokens, "
          f"batch: full forward {args.batch_size} prompts, ours {args.our_batch_size} rows, sources {args.source_batch_size}; "
          f"{args.repeats} rounds")
    print(f"identical top-1 tokens: {same_tops}; max |P@1 diff| {p1_diff:.2e}; max |surprisal diff| {surprisal_diff:.2e} nats")
    print(f"full forward per layer per batch: {timings.median('full_forward'):.3f} s")
    print(f"ours (one batch over layers, KV-reused prefix): {timings.median('ours'):.3f} s")
    print(f"speed-up (median of per-round full_forward/ours): {timings.ratio('full_forward', 'ours'):.2f}x")
    print("P@1 per layer: " + " ".join(f"{value:.2f}" for value in result.precision_at_1["patchscope"].tolist()))
    if args.json:
        check = f"top-1 identical: {same_tops}; max |P@1 diff| {p1_diff:.1e}; max |surprisal diff| {surprisal_diff:.1e}"
        write_result(args.json, json_record(model, prompts, device, dtype, timings, check))


if __name__ == "__main__":
    main()
