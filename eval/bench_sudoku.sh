#!/usr/bin/env bash
# Evaluate a Sudoku run on the shared benchmarks (never trained on): all modes + untrained baseline.
#   bash eval/bench_sudoku.sh [RUN] [extra dgft eval overrides ...]
set -euo pipefail
usage="usage: bash eval/bench_sudoku.sh [RUN (default outputs/sudoku/latest)] [dgft eval overrides ...]; BENCH=DIR: the folder holding the three CSVs"
case "${1:-}" in -h|--help) echo "$usage"; exit 0 ;; esac
RUN=${1:-outputs/sudoku/latest}
shift || true
BENCH=${BENCH:-../shared/benchmarks/sudoku}   # the folder holding the three CSVs
FILES="norvig_easy50.csv norvig_top95.csv d1_4x4_test_sudoku.csv"
# everything checked before the first evaluation (each takes minutes): the run, and every benchmark file
[ -d "$RUN" ] || { echo "bench_sudoku.sh: $RUN: no such run directory or export" >&2; echo "$usage" >&2; exit 2; }
for f in $FILES; do
  [ -f "$BENCH/$f" ] || { echo "bench_sudoku.sh: $BENCH/$f: not found (BENCH=DIR names the folder holding it)" >&2; exit 2; }
done
# the checkout's dgft, installed or not (as `python -m dgft`)
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
stamp=$(mktemp)  # the tables these evaluations write, not earlier ones of the run
trap 'rm -f "$stamp"' EXIT
for f in $FILES; do
  python3 -m dgft eval "$RUN" data="$BENCH/$f" "$@"
done
python3 -m dgft eval "$RUN" "$@"   # the run's own generated held-out split
find -L "$RUN/eval" -name '*.md' -newer "$stamp" -print0 | sort -z | xargs -0 cat
