#!/usr/bin/env bash
# One GPU session (device tool): first where a training step's time goes (bench/profile_step.py on the sudoku_gpu
# step, then on the QLoRA step at 2 layers), then the QLoRA memory/time bench of issue 3, then the GPU Sudoku run
# of issue 2.
#   bash bench/device_session.sh OUT_DIR [TRAIN_MINUTES]
# Each part has its own timeout; at most 8 files land in OUT_DIR: bench_log.txt (what the profiles and the QLoRA
# bench print), bench.tar.gz (their JSON files, qlora_memory.json among them, and the profiles' Chrome traces)
# and the six of eval/gpu_sudoku.sh. The bench parts' timeouts sum to 190 s, as before the profiles were added
# (the QLoRA bench now runs 2 depths and 3 timed steps, as run 2 of eval/RESULTS.md, and no encoder-AR rerun).
# Expects the wheels of ../shared/tools/device-wheels.sh on PYTHONPATH.
set -uo pipefail
OUT=$1
MINUTES=${2:-4.5}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BENCH=$(mktemp -d)  # the bench's files, packed into OUT/bench.tar.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
t0=$SECONDS
# small data (the step's cost does not depend on the number of base puzzles), 9x9 batches only
timeout -k 10 70 python3 bench/profile_step.py --warmup 2 --steps 5 --profile-steps 2 \
  --out "$BENCH/profile_sudoku.json" --trace "$BENCH/trace_sudoku.json.gz" recipe=sudoku_gpu device=cuda \
  task.cache_dir=/tmp/dgft_profile_cache task.base_puzzles=300 task.heldout_puzzles=10 'task.size_weights=[1.0,0.0]' \
  2>&1 | grep -v -e Warning -e warnings.warn | tee "$OUT/bench_log.txt"
echo "=== profile, sudoku_gpu step: $((SECONDS - t0)) s" | tee -a "$OUT/bench_log.txt"
t0=$SECONDS
timeout -k 10 55 python3 bench/profile_step.py --qlora --depth 2 --warmup 2 --steps 3 --profile-steps 1 \
  --out "$BENCH/profile_qlora.json" --trace "$BENCH/trace_qlora.json.gz" \
  2>&1 | grep -v -e Warning -e warnings.warn | tee -a "$OUT/bench_log.txt"
echo "=== profile, QLoRA step (nf4, 2 layers): $((SECONDS - t0)) s" | tee -a "$OUT/bench_log.txt"
t0=$SECONDS
timeout -k 10 65 python3 bench/qlora_memory.py --depths 2 4 --steps 3 --out "$BENCH/qlora_memory.json" \
  2>&1 | grep -v -e Warning -e warnings.warn | tee -a "$OUT/bench_log.txt"
echo "=== qlora bench: $((SECONDS - t0)) s" | tee -a "$OUT/bench_log.txt"
tar czf "$OUT/bench.tar.gz" -C "$BENCH" .
if [ "$(stat -c %s "$OUT/bench.tar.gz")" -gt 15000000 ]; then  # 16 MiB per file come back: drop the traces
  tar czf "$OUT/bench.tar.gz" -C "$BENCH" --exclude 'trace_*' .
fi
DGFT_PREFLIGHT=0 bash eval/gpu_sudoku.sh "$OUT" "$MINUTES"
