#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): the GPU-relevant tests, fused vs scan vs cuDNN equality,
# the benchmark against Flax and jax.experimental.rnn, a short copy/adding run; <= 8 minutes,
# one JSON + table. Without a GPU (or with --dry) it skips the GPU-only parts, each with a line.
#
#   scripts/gpu_check.sh [--dry] [--out=gpu_check.json] [--repeats=5] [--train_steps=300]
#
# Python: $PYTHON, else ./.venv (as ./launch.sh sets it up), else python3 on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
echo "+ $PY scripts/gpu_check.py $*"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" scripts/gpu_check.py "$@"
