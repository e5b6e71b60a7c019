#!/usr/bin/env bash
# Issue 29's GPU measurements, on a machine with one CUDA GPU (benchmarks/gpu.py says what and in
# which order; about 8 minutes, at most 8 files). On this workplace's lent GPU machine, prepared by
# scripts/gpu_bundle.sh here and started with the device tool as
#   run(command="bash benchmarks/gpu.sh", carry=[".gpu"], timeout_s=540)
# it first installs what travelled in .gpu/ (mtbert from this tree, the wheels, the data) into /tmp.
#   benchmarks/gpu.sh [OUT_DIR] [gpu.py options]   (OUT_DIR: $OUT where the device tool sets it)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-${1:-benchmarks/out/gpu}}
[ $# -gt 0 ] && [ -z "${OUT:-}" ] && shift
python=${PYTHON:-python3}
if [ -d .gpu ]; then
  $python -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --target /tmp/site .gpu/wheels/*.whl . || { echo "installing mtbert into /tmp/site failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site:$PWD/.gpu/site
  mkdir -p /tmp/cs224n && tar -xJf .gpu/cs224n.tar.xz -C /tmp/cs224n
  export MTBERT_DATA=/tmp/cs224n
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
$python benchmarks/gpu.py --out "$out" "$@"
