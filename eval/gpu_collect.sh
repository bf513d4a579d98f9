#!/usr/bin/env bash
# Copy what a recipe=sudoku_gpu run has so far into OUT_DIR (at most 8 files come back from the GPU machine): a
# summary (results.md: the run, its training, every evaluation table written yet), the curves, and the rest in one
# tarball. eval/gpu_sudoku.sh calls it after training and after each evaluated file, so a run cut short by the
# device's time limit still brings back what it finished.
#   bash eval/gpu_collect.sh RUN OUT_DIR MINUTES
set -uo pipefail
RUN=$1
OUT=$2
MINUTES=$3
for f in train_summary.json loss.png metrics.jsonl; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"
done
{
  echo "# recipe=sudoku_gpu, $MINUTES min of training: $RUN"
  echo
  python3 - "$RUN" <<'PY'
import json
import sys
from pathlib import Path

run = Path(sys.argv[1])
if (run / "run.json").exists():
    r = json.loads((run / "run.json").read_text())
    print(f"{r['parameters'] / 1e6:.1f}M parameters, device {r['device']}, torch {r['torch']}, "
          f"transformers {r['transformers']}")
if (run / "train_summary.json").exists():
    print(f"train_summary: {json.loads((run / 'train_summary.json').read_text())}")
if (run / "metrics.jsonl").exists():
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    if train:
        last = train[-1]
        print(f"last logged step {last['step']}: loss {last['loss']:.4f}, {last['tokens_per_s']:,.0f} tokens/s, "
              f"{last['elapsed_s'] / max(last['step'], 1):.3f} s/step")
    curve = [f"{r['step']}: {r['9x9_clamped_exact']:.2f}" for r in rows if "9x9_clamped_exact" in r]
    print("held-out 9x9 clamped exact during training (step: exact): " + ", ".join(curve))
PY
  echo
  for f in norvig_easy50 norvig_top95 d1_4x4_test_sudoku heldout; do
    [ -f "$RUN/eval/$f.md" ] && cat "$RUN/eval/$f.md" && echo
  done
} > "$OUT/results.md"
if [ -d "$RUN" ]; then
  tmp=$(mktemp)  # never a half-written run.tar.gz in OUT, if the device's time limit strikes mid-way
  (cd "$RUN" && tar czf "$tmp" --exclude 'eval/.*.lock' $(ls -d eval config.yaml run.json data/heldout.csv 2>/dev/null)) \
    && cp "$tmp" "$OUT/run.tar.gz"
  rm -f "$tmp"
fi
