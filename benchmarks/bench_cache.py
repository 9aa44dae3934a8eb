"""cache_resid_post against a Hugging Face forward with output_hidden_states=True.

Both sides get the same model weights and the same padded batches (texts sorted by length, as ours does)
and return the same rows: every block's output at the requested positions, on the CPU. They run in
alternation in one process; the ratio reported is the median of per-round ratios.

    python benchmarks/bench_cache.py                                   # Qwen3-0.6B architecture, random weights, CPU
    python benchmarks/bench_cache.py --device cuda --dtype bfloat16 --n-texts 1024 --seq-len 512
    python benchmarks/bench_cache.py --model Qwen/Qwen3-0.6B --device cuda --dtype bfloat16   # real weights, online

``--memory`` instead caches ``--n-texts`` and ten times as many texts into on-disk stores, and the ten-times set in
memory, each in a fresh process, and reports each one's peak resident memory while caching (Linux: the peak is
reset after the model is loaded): a store's peak is bounded by one shard (``--shard-texts``), whatever the
number of texts.

    python benchmarks/bench_cache.py --memory --model embedded --n-texts 64 --seq-len 64 --shard-texts 32
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MEASURED_BF16_PEAK_FLOPS,
    alternate,
    block_flops_per_token,
    fraction_of_peak,
    machine_description,
    result_record,
    today,
    write_result,
)

import lens_pivotal as lp  # noqa: E402
from lens_pivotal.model import resolve_device, resolve_dtype  # noqa: E402

RANDOM_QWEN3 = "qwen3-0.6b-random"


def build_models(name: str, device: torch.device, dtype: torch.dtype, with_baseline: bool = True):
    """(our TransformerLens model, an independent HF model with the same weights, or None without_baseline)."""
    from transformers import AutoModelForCausalLM

    if name == RANDOM_QWEN3:
        from lens_pivotal.testing import random_qwen3_0_6b

        hf_model, tokenizer = random_qwen3_0_6b(dtype=dtype, device=device)
        baseline = copy.deepcopy(hf_model) if with_baseline else None
        return lp.load_model(RANDOM_QWEN3, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype), baseline
    if name == "embedded":
        from lens_pivotal.embedded import embedded_model_dir

        name = str(embedded_model_dir())
    baseline = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval() if with_baseline else None
    return lp.load_model(name, device=device, dtype=dtype), baseline


def make_inputs(vocab: int, n_texts: int, seq_len: int, positions_per_text: int, seed: int):
    """Random token texts with lengths between seq_len/2 and seq_len, and positions in each.

    Every text keeps its last token among its positions, so no text can be shortened: the ratio measures
    the forward pass itself, not the truncation cache_resid_post does when later tokens are not needed.
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (n_texts,), generator=generator).tolist()
    texts = [torch.randint(0, vocab, (length,), generator=generator) for length in lengths]
    positions = [
        sorted(torch.randperm(length - 1, generator=generator)[: positions_per_text - 1].tolist()) + [length - 1]
        for length in lengths
    ]
    return texts, positions


def hf_hidden_rows(baseline, texts, positions, batch_size: int, device: torch.device) -> torch.Tensor:
    """The same rows through a plain HF forward (full model, every hidden state returned)."""
    n_layers = baseline.config.num_hidden_layers
    offsets = [0]
    for kept in positions:
        offsets.append(offsets[-1] + len(kept))
    result = torch.empty(n_layers, offsets[-1], baseline.config.hidden_size)
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]), reverse=True)
    last_block = {}
    handle = baseline.model.layers[-1].register_forward_hook(
        lambda module, args, output: last_block.update(out=output[0] if isinstance(output, tuple) else output)
    )
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(texts[index]) for index in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, index in enumerate(batch):
                ids[row, : len(texts[index])] = texts[index]
                mask[row, : len(texts[index])] = 1
            with torch.inference_mode():
                states = baseline(ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
            blocks = torch.stack([*states[1:-1], last_block["out"]])
            batch_rows = torch.tensor([row for row, index in enumerate(batch) for _ in positions[index]], device=device)
            batch_positions = torch.tensor([p for index in batch for p in positions[index]], device=device)
            destination = torch.tensor([offsets[index] + k for index in batch for k in range(len(positions[index]))])
            result[:, destination] = blocks[:, batch_rows, batch_positions].float().cpu()
    finally:
        handle.remove()
    return result


def memory_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak since the last :func:`reset_peak`) of this process, in MiB (Linux)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    """Start peak-memory accounting afresh, so loading the model does not count: memory freed while loading goes back
    to the system (glibc ``malloc_trim``; kept, it would silently absorb what caching allocates) and the peak is reset
    (Linux ``clear_refs``)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def cache_once(args: argparse.Namespace) -> None:
    """Child of ``--memory``: cache ``--n-texts`` texts (into ``--out`` if given) and print the peak RSS."""
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    model, _ = build_models(args.model, device, dtype, with_baseline=False)
    texts, positions = make_inputs(model.cfg.d_vocab, args.n_texts, args.seq_len, args.positions_per_text, seed=0)
    reset_peak()
    loaded = memory_mib("VmRSS")
    result = lp.cache_resid_post(model, texts, positions, batch_size=args.batch_size, out=args.out,
                                 shard_texts=args.shard_texts, progress=False)
    rows = len(result) if args.out else result.shape[1]
    print(f"{args.n_texts} {rows} {loaded:.0f} {memory_mib('VmHWM'):.0f}")


def memory_report(args: argparse.Namespace) -> None:
    """Peak RSS of caching 1x and 10x the texts into stores, and 10x in memory, each in a fresh process."""
    runs = [("store", args.n_texts), ("store", 10 * args.n_texts), ("in memory", 10 * args.n_texts)]
    print(f"machine: {machine_description(resolve_device(args.device))}; model {args.model}, date {today()}")
    print(f"texts of {args.seq_len // 2}-{args.seq_len} tokens, {args.positions_per_text} positions each, "
          f"{args.shard_texts} texts per shard\n")
    print("| where | texts | rows | RSS before caching (MiB) | peak RSS while caching (MiB) | peak - before (MiB) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for number, (where, n_texts) in enumerate(runs):
            command = [sys.executable, __file__, "--cache-once", "--n-texts", str(n_texts)] + _shared_arguments(args)
            if where == "store":
                command += ["--out", str(Path(scratch) / f"store{number}")]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
            texts, rows, loaded, peak = (int(value) for value in output[-4:])
            print(f"| {where} | {texts} | {rows} | {loaded} | {peak} | {peak - loaded} |")


def _shared_arguments(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--dtype", args.dtype, "--seq-len", str(args.seq_len), "--batch-size",
            str(args.batch_size), "--positions-per-text", str(args.positions_per_text), "--shard-texts",
            str(args.shard_texts)] + (["--device", args.device] if args.device else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=RANDOM_QWEN3, help=f"{RANDOM_QWEN3} (default), embedded, a hub id or a directory")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--n-texts", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128, help="longest text; lengths are uniform in [seq_len/2, seq_len]")
    parser.add_argument("--positions-per-text", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="report peak RSS for 1x and 10x the texts (see above)")
    parser.add_argument("--shard-texts", type=int, default=32, help="--memory: texts per store shard (default: 32)")
    parser.add_argument("--json", default=None, help="also append the result as one JSON line to this file (gpu_suite.sh)")
    parser.add_argument("--cache-once", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory or args.cache_once:
        (memory_report if args.memory else cache_once)(args)
        return

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    model, baseline = build_models(args.model, device, dtype)
    texts, positions = make_inputs(model.cfg.d_vocab, args.n_texts, args.seq_len, args.positions_per_text, seed=0)
    n_tokens = sum(len(text) for text in texts)

    ours = lp.cache_resid_post(model, texts, positions, batch_size=args.batch_size, progress=False)
    theirs = hf_hidden_rows(baseline, texts, positions, args.batch_size, device)
    max_diff = (ours - theirs).abs().max().item()

    timings = alternate(
        {
            "hf": lambda: hf_hidden_rows(baseline, texts, positions, args.batch_size, device),
            "ours": lambda: lp.cache_resid_post(model, texts, positions, batch_size=args.batch_size, progress=False),
            "ours_eager": lambda: lp.cache_resid_post(
                model, texts, positions, batch_size=args.batch_size, fast_path=False, progress=False
            ),
        },
        repeats=args.repeats,
        device=device,
    )
    ratio = timings.ratio("hf", "ours")
    ours_tps = n_tokens / timings.median("ours")
    hf_tps = n_tokens / timings.median("hf")
    flops_per_token = block_flops_per_token(baseline.model.layers)
    print(f"machine: {machine_description(device)}")
    print(f"model: {args.model} ({model.cfg.n_layers} blocks, d_model {model.cfg.d_model}), dtype {dtype}, date {today()}")
    print(f"inputs: {args.n_texts} texts, {n_tokens} tokens, lengths {args.seq_len // 2}-{args.seq_len}, "
          f"{args.positions_per_text} positions each, batch {args.batch_size}, {args.repeats} rounds")
    print(f"max |ours - hf| over all rows and blocks: {max_diff:.2e}")
    print(f"hf forward (output_hidden_states): {timings.median('hf'):.3f} s  {hf_tps:,.0f} tok/s")
    print(f"cache_resid_post:                  {timings.median('ours'):.3f} s  {ours_tps:,.0f} tok/s")
    print(f"  same, fast_path=False (bridge):  {timings.median('ours_eager'):.3f} s  "
          f"{n_tokens / timings.median('ours_eager'):,.0f} tok/s  ({timings.ratio('hf', 'ours_eager'):.2f}x)")
    print(f"speed-up (median of per-round hf/ours): {ratio:.2f}x")
    fraction = fraction_of_peak(ours_tps * flops_per_token, device)
    if fraction is not None:
        print(f"block FLOPs {flops_per_token / 1e9:.2f} GFLOP/token -> {fraction:.1%} of the measured bf16 peak "
              f"({MEASURED_BF16_PEAK_FLOPS / 1e12:.0f} TFLOP/s)")
    if args.json:
        write_result(args.json, result_record(
            "bench_cache: resid_post tok/s vs HF output_hidden_states", device, dtype, ours_tok_s=ours_tps,
            baseline_tok_s=hf_tps, ratio=ratio, fraction_of_peak=fraction, check=f"max abs diff {max_diff:.1e}",
        ))


if __name__ == "__main__":
    main()
