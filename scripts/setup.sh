#!/usr/bin/env bash
# Set up mtbert in ./.venv on a fresh machine.
#   scripts/setup.sh          mtbert and its runtime dependencies
#   scripts/setup.sh test     ... plus what the test suite needs
# torch goes in first and pinned (TORCH_SPEC, default torch==2.13.0, the CPU
# build): asked for through mtbert's own `torch>=2.3`, pip would pull the newest
# CUDA build, several GB, onto a machine that may have no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
extras=${1:-}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip="./.venv/bin/python -m pip install --quiet --disable-pip-version-check"
$pip "$TORCH_SPEC"
if [ "$extras" = "test" ]; then
  $pip -e ".[test,bench]"
else
  $pip -e .
fi
./.venv/bin/mtbert --version
