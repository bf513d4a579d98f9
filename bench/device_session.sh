#!/usr/bin/env bash
# One GPU session (device tool): first where a training step's time goes (bench/profile_step.py on the sudoku_gpu
# step, then on the QLoRA step at 2 layers), then the QLoRA memory/time bench of issue 3, then the GPU Sudoku run
# of issue 2.
#   bash bench/device_session.sh OUT_DIR [TRAIN_MINUTES] [PARTS]
# PARTS: which parts run, from "profile qlora experts views sudoku" (the default: all but experts, the QLoRA bench
# with LoRA on the experts too, 75 s; views: bench/sample_views.py, the sampler's 16 views in one model call or in
# 16, at most 90 s). A session can run the bench parts
# in one call and the Sudoku run in the next, so that each call stays within the device tool's 10 minutes:
#   bash bench/device_session.sh $OUT 5 "profile"; bash bench/device_session.sh $OUT 4 "sudoku"
# The Sudoku part alone fits one call: 4 min of training, about 4.5 min of checks, start-up and evaluation; its
# evaluation stops by DGFT_DEADLINE_S (570 s after this script starts unless set) and keeps what it finished.
# Each part has its own timeout; at most 8 files land in OUT_DIR: bench_log.txt (what the profiles and the QLoRA
# bench print), bench.tar.gz (their JSON files, qlora_memory.json among them, and the profiles' Chrome traces)
# and the six of eval/gpu_sudoku.sh. The profile part (the sudoku_gpu step profiled at batch 512 and timed at 256
# and 128, the QLoRA step profiled) has timeouts summing to 205 s, the QLoRA bench 65 s (2 depths and 3 timed
# steps, as run 2 of eval/RESULTS.md).
# Expects the wheels of ../shared/tools/device-wheels.sh on PYTHONPATH.
# The device tool carries the working tree with .gpu and .whl, 64 MiB in all: in session 39 they came to 62.4 MiB
# (tracked files 16.4 MB, .gpu 3.5 MB, .whl 45.4 MB), 1.6 MiB to spare. The sudoku part imports no bitsandbytes
# (dgft imports it only for nf4 and paged_adamw_8bit), so a call of that part alone may leave its wheel (43 MB) out:
#   mv .whl/bitsandbytes-*.whl /tmp/   (before the call; put it back after)
set -uo pipefail
OUT=$1
MINUTES=${2:-4.5}
PARTS=" ${3:-profile qlora views sudoku} "
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BENCH=$(mktemp -d)  # the bench's files, packed into OUT/bench.tar.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [[ $PARTS == *" profile "* ]]; then
  t0=$SECONDS
  # small data (the step's cost does not depend on the number of base puzzles), 9x9 batches only
  timeout -k 10 70 python3 bench/profile_step.py --warmup 2 --steps 5 --profile-steps 2 \
    --out "$BENCH/profile_sudoku.json" --trace "$BENCH/trace_sudoku.json.gz" recipe=sudoku_gpu device=cuda \
    task.cache_dir=/tmp/dgft_profile_cache task.base_puzzles=300 task.heldout_puzzles=10 'task.size_weights=[1.0,0.0]' \
    2>&1 | grep -v -e Warning -e warnings.warn | tee "$OUT/bench_log.txt"
  echo "=== profile, sudoku_gpu step: $((SECONDS - t0)) s" | tee -a "$OUT/bench_log.txt"
  for b in 256 128; do  # does the step's time scale with the batch (device-bound) or not (launch/host-bound)?
    t0=$SECONDS
    timeout -k 10 40 python3 bench/profile_step.py --warmup 2 --steps 5 --profile-steps 0 --no-sync-sites \
      --out "$BENCH/timing_sudoku_b$b.json" recipe=sudoku_gpu device=cuda trainer.batch_size=$b \
      task.cache_dir=/tmp/dgft_profile_cache task.base_puzzles=300 task.heldout_puzzles=10 'task.size_weights=[1.0,0.0]' \
      2>&1 | grep -v -e Warning -e warnings.warn | tee -a "$OUT/bench_log.txt"
    echo "=== timing, sudoku_gpu step at batch $b: $((SECONDS - t0)) s" | tee -a "$OUT/bench_log.txt"
  done
  t0=$SECONDS
  timeout -k 10 55 python3 bench/profile_step.py --qlora --depth 2 --warmup 2 --steps 3 --profile-steps 1 \
    --out "$BENCH/profile_qlora.json" --trace "$BENCH/trace_qlora.json.gz" \
    2>&1 | grep -v -e Warning -e warnings.warn | tee -a "$OUT/bench_log.txt"
  echo "=== profile, QLoRA step (nf4, 2 layers): $((SECONDS - t0)) s" | tee -a "$OUT/bench_log.txt"
fi
if [[ $PARTS == *" qlora "* ]]; then
  t0=$SECONDS
  timeout -k 10 65 python3 bench/qlora_memory.py --depths 2 4 --steps 3 --out "$BENCH/qlora_memory.json" \
    2>&1 | grep -v -e Warning -e warnings.warn | tee -a "$OUT/bench_log.txt"
  echo "=== qlora bench: $((SECONDS - t0)) s" | tee -a "$OUT/bench_log.txt"
fi
if [[ $PARTS == *" experts "* ]]; then  # LoRA on the experts too (model.lora.target_experts), both bases
  t0=$SECONDS
  timeout -k 10 75 python3 bench/qlora_memory.py --depths 2 4 --steps 3 --target-experts \
    --out "$BENCH/qlora_memory_experts.json" 2>&1 | grep -v -e Warning -e warnings.warn | tee -a "$OUT/bench_log.txt"
  echo "=== qlora bench, expert LoRA: $((SECONDS - t0)) s" | tee -a "$OUT/bench_log.txt"
fi
if [[ $PARTS == *" views "* ]]; then  # the sampler's views one model call each, or stacked (sampler.view_batch)
  t0=$SECONDS
  timeout -k 10 90 python3 bench/sample_views.py --device cuda --batch 512 --views 16 --steps 4 --repeats 2 \
    --view-batch 1 0 --out "$BENCH/sample_views.json" recipe=sudoku_gpu \
    2>&1 | grep -v -e Warning -e warnings.warn | tee -a "$OUT/bench_log.txt"
  echo "=== sample_views, 16 views at batch 512: $((SECONDS - t0)) s" | tee -a "$OUT/bench_log.txt"
fi
if [ -n "$(ls -A "$BENCH")" ]; then
  tar czf "$OUT/bench.tar.gz" -C "$BENCH" .
  if [ "$(stat -c %s "$OUT/bench.tar.gz")" -gt 15000000 ]; then  # 16 MiB per file come back: drop the traces
    tar czf "$OUT/bench.tar.gz" -C "$BENCH" --exclude 'trace_*' .
  fi
fi
if [[ $PARTS == *" sudoku "* ]]; then  # ends by DGFT_DEADLINE_S (default 570) from this script's start
  DGFT_PREFLIGHT=0 DGFT_DEADLINE_S=$(( ${DGFT_DEADLINE_S:-570} - SECONDS )) bash eval/gpu_sudoku.sh "$OUT" "$MINUTES"
fi
