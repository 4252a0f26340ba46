#!/usr/bin/env bash
# gated_rnn entry point. Every command sets up ./.venv itself (once; again when
# pyproject.toml changes) and echoes the python command it runs.
#
#   ./launch.sh demo               the main job: a small horizon search -> horizon table + plots
#   ./launch.sh test [pytest args] the test suite (CPU, a few minutes)
#   ./launch.sh run  --config=experiments/configs/copy.py --workdir=runs/x [--config.seq_len=200 ...]
#   ./launch.sh sweep [sweep flags]
#   ./launch.sh horizon [horizon flags]   adaptive search of the longest solved T (experiments/horizon.py)
#   ./launch.sh bench [benchmark flags]
set -euo pipefail
cd "$(dirname "$0")"

VENV=${GATED_RNN_VENV:-.venv}
PY="$VENV/bin/python"

setup() {  # $1: "core" or "test" (the [test] extra plus optional torch)
  local what=$1 stamp="$VENV/.stamp-$1" target=.
  [ "$what" = test ] && target=".[test]"
  if [ ! -x "$PY" ]; then
    echo "+ python3 -m venv $VENV"
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "+ pip install -e $target"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -e "$target"
    if [ "$what" = test ] && [ -z "${GATED_RNN_NO_TORCH:-}" ]; then
      # Optional: enables the live PyTorch comparisons (golden files are checked without it).
      "$PY" -m pip install -q "torch==${GATED_RNN_TORCH_VERSION:-2.13.0}" \
        || echo "torch not installed: live PyTorch comparisons will be skipped"
    fi
    touch "$stamp"
  fi
}

run() { echo "+ $*"; "$@"; }

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    setup core
    run "$PY" -m experiments.horizon --grid=demo --root="${GATED_RNN_DEMO_DIR:-runs/demo}" "$@"
    ;;
  test)
    setup test
    # One pytest worker per core (pytest-xdist), a test file per worker at a time: the tests are
    # compile-bound and single-threaded, and a file's module fixtures stay in one process.
    run "$PY" -m pytest -q -n "${GATED_RNN_TEST_WORKERS:-auto}" --dist loadfile "$@"
    ;;
  run)
    setup core
    run "$PY" -m experiments.main "$@"
    ;;
  sweep)
    setup core
    run "$PY" -m experiments.sweep "$@"
    ;;
  horizon)
    setup core
    run "$PY" -m experiments.horizon "$@"
    ;;
  bench)
    setup test
    run "$PY" -m benchmarks.bench "$@"
    ;;
  *)
    sed -n '2,10p' "$0"
    [ "$cmd" = help ] || exit 2
    ;;
esac
