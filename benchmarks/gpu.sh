#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md, in the order most wanted first, on a machine
# with one CUDA GPU and mtbert installed (MTBERT_DATA pointing at the course data).
#   benchmarks/gpu.sh [OUT_DIR]      (default benchmarks/out/gpu; about 20 minutes on an H100)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python=${PYTHON:-python}

$python -m pytest tests/test_cuda.py -q 2>&1 | tee "$out/cuda_tests.log" | tail -15
for impl in mtbert plain; do  # where a step's time goes: host against kernels
  $python benchmarks/profile_step.py --device cuda --encoder bert-base-random --impl $impl --rows 30 \
    > "$out/profile-$impl.txt" 2>&1
  head -12 "$out/profile-$impl.txt"
done
$python benchmarks/bench.py --device cuda --steps 50 --warmup 10 --encoder bert-base-random \
  --only train/sst mfu/ step/ eval/sst --out "$out/bench-bert-base-random.json"
$python benchmarks/bench.py --device cuda --steps 50 --warmup 10 --only train/sst eval/sst \
  --out "$out/bench-minilm.json"
