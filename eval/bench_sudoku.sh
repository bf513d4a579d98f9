#!/usr/bin/env bash
# Evaluate a Sudoku run on the shared benchmarks (never trained on): all modes + untrained baseline.
#   bash eval/bench_sudoku.sh [RUN or EXPORT] [extra dgft eval overrides ...] (name=X: X_<set> per set)
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
# name=X (one name per evaluation, as `dgft eval` keeps one result per name): X_<file> for each set, X_heldout
name="" args=()
for a in "$@"; do case "$a" in name=*) name=${a#name=} ;; *) args+=("$a") ;; esac; done
stamp=$(mktemp)  # the tables these evaluations write, not earlier ones of the run
trap 'rm -f "$stamp"' EXIT
failed=""
evaluate() {  # evaluate WHAT [overrides ...]: one dgft eval, named NAME_<WHAT> when name= was given
  local what=$1; shift
  local rc=0
  python3 -m dgft eval "$RUN" "$@" ${args[@]+"${args[@]}"} ${name:+"name=${name}_$what"} || rc=$?
  if [ "$rc" -ge 128 ]; then exit "$rc"; fi  # Ctrl-C (130) or a signal: stop here, as dgft eval did
  if [ "$rc" -ne 0 ]; then failed="$failed $what"; fi
}
for f in $FILES; do
  evaluate "${f%.csv}" data="$BENCH/$f"
done
if [ -f "$RUN/dgft_sampler.json" ]; then  # an export carries no held-out split
  echo "bench_sudoku.sh: $RUN is an export, which carries no held-out split: the benchmark files only" >&2
else
  evaluate heldout  # the run's own generated held-out split
fi
if [ -d "$RUN/eval" ]; then find -L "$RUN/eval" -name '*.md' -newer "$stamp" -print0 | sort -z | xargs -0 -r cat; fi
if [ -n "$failed" ]; then  # the others' tables are above; dgft eval said why each of these did not run
  echo "bench_sudoku.sh: not evaluated:$failed (see dgft eval's message above each)" >&2
  exit 2
fi
