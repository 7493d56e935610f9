#!/usr/bin/env bash
# `benchmarks/generate.py --quick` (ours only) for two trees of tfdialogpt in one session,
# alternating A B A B, so host drift hits both alike. Usage:
#   git worktree add ../old <commit>; benchmarks/compare_trees.sh ../old .
set -euo pipefail
OLD=$(cd "$1" && pwd); NEW=$(cd "${2:-.}" && pwd)
PY=${PYTHON:-.venv/bin/python}
for round in 1 2; do
  for tree in "$OLD" "$NEW"; do
    echo "=== round $round tree $tree"
    PYTHONPATH=$tree TF_CPP_MIN_LOG_LEVEL=3 "$PY" benchmarks/generate.py --quick --peers 2>&1 | grep "^| small\|b1 tfdialogpt "
  done
done
