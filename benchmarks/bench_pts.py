"""PTS rollout throughput: our batched KV-cached rollouts against Hugging Face ``generate``.

Contenders, all sampling ``--num-samples`` completions of one prompt with the same temperature/top-p/top-k and
stop tokens, on the same model, alternating in one process:

* ``per_sample``: one ``generate`` call per completion (the naive loop);
* ``hf_batched``: one ``generate`` call with ``num_return_sequences`` (prefills the prompt once per sample);
* ``ours``: :class:`lens_pivotal.pts.rollouts.HFRollouts` (prompt prefilled once, cache repeated, finished rows
  leave the batch).

Throughput is generated tokens (stop token included, padding excluded) per second of the median round; the
ratios are medians of per-round ratios.

    python benchmarks/bench_pts.py                                    # SmolLM2-135M architecture, random weights, CPU
    python benchmarks/bench_pts.py --model embedded --question "Tom has 4 marbles. A friend gives Tom 13 more marbles. How many marbles does Tom have now?"
    python benchmarks/bench_pts.py --device cuda --dtype bfloat16 --num-samples 64 --max-new-tokens 256

``--json PATH`` also appends ours against ``hf_batched`` to PATH as one JSON line (``benchmarks/gpu_suite.sh``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Timings, alternate, block_flops_per_token, fraction_of_peak, machine_description, result_record, today, write_result,
)

from lens_pivotal.model import resolve_device, resolve_dtype  # noqa: E402
from lens_pivotal.pts.rollouts import HFRollouts, SamplingConfig  # noqa: E402

RANDOM_SMOLLM2 = "smollm2-135m-random"
WARMUP = 1


def smollm2_135m_config():
    """SmolLM2-135M's architecture (Llama, 30 blocks, d_model 576, vocab 49,152), written out so it needs no files."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    """An HF causal LM: random SmolLM2-135M, the embedded SmolLM2, a hub id or a directory."""
    from transformers import AutoModelForCausalLM

    if name == RANDOM_SMOLLM2:
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(smollm2_135m_config(), dtype=dtype).to(device).eval()
    if name == "embedded":
        from lens_pivotal.embedded import embedded_model_dir

        name = str(embedded_model_dir())
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()


def generated_tokens(sequences: torch.Tensor, prompt_length: int, stop_id: int) -> int:
    """Tokens generated per row up to and including its first stop token, summed."""
    total = 0
    for row in sequences[:, prompt_length:].tolist():
        total += row.index(stop_id) + 1 if stop_id in row else len(row)
    return total


def hf_generate(model, prompt: torch.Tensor, count: int, args: argparse.Namespace, stop_id: int) -> int:
    """``count`` completions in one ``generate`` call; returns the tokens generated."""
    output = model.generate(
        prompt, do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        max_new_tokens=args.max_new_tokens, num_return_sequences=count, eos_token_id=stop_id, pad_token_id=stop_id,
    )
    return generated_tokens(output, prompt.shape[1], stop_id)


def make_prompt(args: argparse.Namespace, vocab_size: int) -> torch.Tensor:
    """[1, length] prompt ids: random tokens, or ``--question`` formatted as PTS formats the shipped dataset's prompts."""
    if args.question is None:
        return torch.randint(3, vocab_size, (1, args.prompt_length), generator=torch.Generator().manual_seed(0))
    from transformers import AutoTokenizer

    from lens_pivotal.pts.prompts import ARITHMETIC_ONE_SHOT, prompt_token_ids

    name = args.model
    if name == "embedded":
        from lens_pivotal.embedded import embedded_model_dir

        name = str(embedded_model_dir())
    return torch.tensor([prompt_token_ids(AutoTokenizer.from_pretrained(name), args.question, ARITHMETIC_ONE_SHOT)])


def ratio_of_rates(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of ours/theirs throughput, each round timed back to back."""
    return statistics.median(mine / other for mine, other in zip(ours, theirs))


def json_record(model, device: torch.device, dtype: torch.dtype, prompt_length: int, counts: dict[str, list[int]],
                rates: dict[str, list[float]], timings: Timings) -> dict:
    """The ``--json`` record: ours against ``hf_batched``, and the share of the bf16 peak ours reaches.

    FLOPs count the prompt once (ours prefills it once) and each generated token once, through the blocks only.
    """
    tokens = {name: statistics.median(counts[name][WARMUP:]) for name in ("ours", "hf_batched")}
    flops_per_second = (prompt_length + tokens["ours"]) * block_flops_per_token(model.model.layers) / timings.median("ours")
    return result_record(
        "bench_pts: generated tok/s vs one batched HF generate", device, dtype,
        ours_tok_s=statistics.median(rates["ours"]), baseline_tok_s=statistics.median(rates["hf_batched"]),
        ratio=ratio_of_rates(rates["ours"], rates["hf_batched"]), fraction_of_peak=fraction_of_peak(flops_per_second, device),
        check=f"sampled, no token check; tokens per round: ours {tokens['ours']:.0f}, HF {tokens['hf_batched']:.0f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=RANDOM_SMOLLM2, help=f"{RANDOM_SMOLLM2} (default), embedded, a hub id or a directory")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--prompt-length", type=int, default=100, help="random prompt tokens (default: 100)")
    parser.add_argument("--question", default=None,
                        help="instead of random tokens, this question in the arithmetic one-shot chat prompt (models with a tokenizer)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip-per-sample", action="store_true", help="leave out the slow one-call-per-sample loop")
    parser.add_argument("--json", metavar="PATH", default=None, help="append ours vs hf_batched to PATH as one JSON line")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    model = build_model(args.model, device, dtype)
    stop_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else model.config.eos_token_id[0]
    prompt = make_prompt(args, model.config.vocab_size).to(device)
    ours = HFRollouts(model, [stop_id], SamplingConfig(args.temperature, args.top_p, args.top_k))
    counts: dict[str, list[int]] = {"ours": [], "hf_batched": [], "per_sample": []}

    def run_ours() -> None:
        counts["ours"].append(sum(map(len, ours.sample(prompt[0].tolist(), args.num_samples, args.max_new_tokens, seed=0))))

    def run_batched() -> None:
        counts["hf_batched"].append(hf_generate(model, prompt, args.num_samples, args, stop_id))

    def run_per_sample() -> None:
        counts["per_sample"].append(sum(hf_generate(model, prompt, 1, args, stop_id) for _ in range(args.num_samples)))

    contenders = {"ours": run_ours, "hf_batched": run_batched}
    if not args.skip_per_sample:
        contenders["per_sample"] = run_per_sample
    with torch.inference_mode():
        timings = alternate(contenders, repeats=args.repeats, device=device, warmup=WARMUP)
    rates = {  # tokens/s of each timed round
        name: [tokens / seconds for tokens, seconds in zip(counts[name][WARMUP:], timings.seconds[name])] for name in contenders
    }

    print(f"machine: {machine_description(device)}")
    print(f"model: {args.model}, dtype {dtype}, date {today()}")
    print(f"rollouts: {args.num_samples} samples x <= {args.max_new_tokens} new tokens after a {prompt.shape[1]}-token "
          f"prompt; T={args.temperature} top-p={args.top_p} top-k={args.top_k}; {args.repeats} rounds")
    for name in contenders:
        tokens = statistics.median(counts[name][WARMUP:])
        print(f"{name:>11}: {timings.median(name):8.3f} s  {tokens:6.0f} tokens  {statistics.median(rates[name]):10,.0f} tok/s")
    for baseline in [name for name in contenders if name != "ours"]:
        print(f"ours / {baseline} throughput (median of per-round ratios): {ratio_of_rates(rates['ours'], rates[baseline]):.2f}x")
    if args.json:
        write_result(args.json, json_record(model, device, dtype, prompt.shape[1], counts, rates, timings))


if __name__ == "__main__":
    main()
