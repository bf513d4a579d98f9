#!/usr/bin/env bash
# One GPU session (device tool): the QLoRA memory/time bench of issue 3, then the GPU Sudoku run of issue 2.
#   bash bench/device_session.sh OUT_DIR [TRAIN_MINUTES]
# Each part has its own timeout; at most 8 files land in OUT_DIR (qlora_memory.json, qlora_log.txt and the
# six of eval/gpu_sudoku.sh). Expects the wheels of ../shared/tools/device-wheels.sh on PYTHONPATH.
set -uo pipefail
OUT=$1
MINUTES=${2:-4.5}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
t0=$SECONDS
timeout -k 10 150 python3 bench/qlora_memory.py --depths 2 3 4 --steps 4 --out "$OUT/qlora_memory.json" \
  2>&1 | grep -v -e Warning -e warnings.warn | tee "$OUT/qlora_log.txt"
echo "=== qlora bench: $((SECONDS - t0)) s"
t0=$SECONDS
timeout -k 10 40 python3 bench/qlora_memory.py --modes nf4 --depths 4 --steps 2 --ar-weight 0.5 \
  --out /tmp/qlora_ar.json 2>&1 | grep -v -e Warning -e warnings.warn | tee -a "$OUT/qlora_log.txt"
echo "=== qlora bench with encoder AR loss: $((SECONDS - t0)) s"
DGFT_PREFLIGHT=0 bash eval/gpu_sudoku.sh "$OUT" "$MINUTES"
