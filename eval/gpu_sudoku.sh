#!/usr/bin/env bash
# The GPU run, end to end on one machine: train recipe=sudoku_gpu (33M parameters) from scratch for MINUTES
# minutes on the data pre-generated in .gpu/ by `bash eval/gpu_prepare.sh`, evaluate the run on the three
# benchmark files (every sampling mode + the untrained baseline) and on its held-out split, and copy to OUT_DIR:
# log.txt, results.md, train_summary.json, loss.png, metrics.jsonl and run.tar.gz (eval/*.json|md|png,
# config.yaml, run.json, data/heldout.csv).
#   bash eval/gpu_sudoku.sh OUT_DIR [MINUTES] [train overrides ...]       # MINUTES: 5 unless given; 4.5 works
# Wall time: MINUTES + about 1.5 min (checks 30 s, start-up 30 s, saving 10 s) + the evaluation: 1 min with one view
# (run 2), not yet timed with the recipe's 8 views and 2 passes (a review estimated 2.5-5 min), at most 300 s, less
# with DGFT_DEADLINE_S. Each stage has its own timeout, and the files are collected whatever happened before.
# Needs .gpu/cache.tar.xz and .gpu/bench/ (carry ".gpu"; DGFT_DRY_RUN=1 needs them too): without the tarball the
# training data are generated first (about 5 min of one core: 75-120 s with the 4 workers of a GPU machine).
# Works with dgft installed or only on PYTHONPATH (it runs `python3 -m dgft`).
# DGFT_DRY_RUN=1: every stage on the CPU in a few minutes (a 2-layer model, 3 steps, 4 puzzles per file, 2 views).
# DGFT_PREFLIGHT=0 skips the preflight stage (tests/test_gpu.py's train and eval on CUDA, a tiny model, about 20 s).
# DGFT_EVAL="baseline=false limit=20": more `dgft eval` overrides for every evaluated file.
# DGFT_DEADLINE_S=N: the whole script should end within N s (a device command's limit): the evaluation stage's
# timeout is cut to what is left, less 30 s to collect; whatever it finished by then comes back.
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash eval/gpu_sudoku.sh OUT_DIR [MINUTES] [train overrides ...]" >&2
  exit 2
fi
OUT=$1
MINUTES=${2:-5}
shift $(($# >= 2 ? 2 : 1))
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}  # progress bars every 20 s, not every 0.1 s, in the log
DRY=${DGFT_DRY_RUN:-0}
RUN=outputs/sudoku_gpu/$(date +%Y-%m-%d_%H-%M-%S)
CACHE=outputs/gpu_cache  # the unpacked data (git-ignored, never carried)

TRAIN=(recipe=sudoku_gpu "hydra.run.dir=$RUN" "task.cache_dir=$CACHE" "trainer.time_limit_min=$MINUTES")
EVAL=()
if [ "$DRY" = 1 ]; then
  TRAIN+=(device=cpu trainer.num_threads=1 trainer.max_steps=3 trainer.batch_size=8 trainer.eval_every=2
          trainer.eval_puzzles=2 trainer.log_every=1 model.hidden_size=32 model.num_layers=2 model.num_heads=2
          model.num_kv_heads=1 model.head_dim=16 model.intermediate_size=64 model.moe_intermediate_size=32)
  EVAL+=(device=cpu limit=4 sampler.views=2 sampler.steps=24)  # the recipe's 8 views and 81 steps: 300 s per file
else
  TRAIN+=(device=cuda)
  EVAL+=(device=cuda)
fi
TRAIN+=("$@")
read -r -a MORE_EVAL <<< "${DGFT_EVAL:-}"
EVAL+=(${MORE_EVAL[@]+"${MORE_EVAL[@]}"})

stage() {  # stage NAME SECONDS PROGRAM...: run with a timeout (TERM, then KILL 30 s later), report time and status
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "=== $name: start $(date +%T), timeout ${limit}s"
  timeout -k 30 "$limit" "$@"
  rc=$?
  echo "=== $name: rc $rc, $((SECONDS - t0)) s"
  return $rc
}

environment() {
  timeout 30 nvidia-smi || echo "(no nvidia-smi)"
  stage environment 120 python3 - "$DRY" <<'PY'
import importlib.metadata as md
import os
import sys

import torch

import dgft

print(f"dgft from {dgft.__file__}")
print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, torch {torch.__version__} (CUDA {torch.version.cuda}),"
      f" cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
print(", ".join(f"{m} {md.version(m)}" for m in ("transformers", "hydra-core", "omegaconf", "datasets", "evaluate",
                                                 "peft", "tokenizers", "safetensors", "numpy", "tqdm")))
if sys.argv[1] != "1" and not torch.cuda.is_available():
    sys.exit("no CUDA device: not training on the CPU (DGFT_DRY_RUN=1 does that, with a tiny model)")
PY
}

prepare() {  # unpack the pre-generated data where the composed config looks for them
  stage prepare 180 python3 - "${TRAIN[@]}" <<'PY'
import shutil
import sys
import tarfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from dgft.cache import load_splits
from dgft.cli import recipes_dir
from dgft.config import register
from dgft.data import cache_key

register()
with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
    cfg = compose(config_name="train", overrides=[o for o in sys.argv[1:] if not o.startswith("hydra.")])
name = f"sudoku-{cache_key(cfg.task, cfg.seed)}"
cache, packed = Path(cfg.task.cache_dir), Path(".gpu/cache.tar.xz")


def rows():  # the unpacked data's rows per split, or why they do not load (as training would load them)
    try:
        return {k: len(v) for k, v in load_splits(cache / name).items()}
    except Exception as err:  # noqa: BLE001 (missing, damaged, or unpacked from a tarball of an older dgft)
        return f"{type(err).__name__}: {err}"


if packed.exists() and not isinstance(rows(), dict):
    shutil.rmtree(cache / name, ignore_errors=True)
    with tarfile.open(packed) as tar:
        members = tar.getnames()
        tar.extractall(cache, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    print(f"unpacked {packed} ({packed.stat().st_size / 1e6:.1f} MB): {sorted({m.split('/')[0] for m in members})}")
found = rows()
if isinstance(found, dict):
    print(f"data: {cache / name} (found: {found})")
else:
    print(f"data: {cache / name} does not load ({found}): train will generate {cfg.task.base_puzzles} + "
          f"{cfg.task.heldout_puzzles} puzzles per size first (the tarball holds other settings, or was packed by an "
          "older dgft: run eval/gpu_prepare.sh again)")
PY
}

evaluate_all() {  # `dgft eval` per file, in one process: the model loads in a second, python and CUDA in ten
  local limit=300
  if [ -n "${DGFT_DEADLINE_S:-}" ]; then
    limit=$(( DGFT_DEADLINE_S - SECONDS - 30 < limit ? DGFT_DEADLINE_S - SECONDS - 30 : limit ))
    if [ "$limit" -lt 20 ]; then
      echo "=== eval: skipped, ${limit}s left before DGFT_DEADLINE_S=$DGFT_DEADLINE_S"
      return 1
    fi
  fi
  stage eval "$limit" python3 - "$RUN" "$OUT" "$MINUTES" "${EVAL[@]}" <<'PY'
import subprocess
import sys
import time
import traceback

from hydra import compose, initialize_config_dir

from dgft.cli import recipes_dir
from dgft.config import register
from dgft.evaluate import evaluate

register()
run, out, minutes, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
failed = 0
for data in [".gpu/bench/norvig_easy50.csv", ".gpu/bench/norvig_top95.csv", ".gpu/bench/d1_4x4_test_sudoku.csv", None]:
    t0 = time.time()
    try:
        with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
            cfg = compose(config_name="eval", overrides=[f"run={run}", *([f"data={data}"] if data else []), *extra])
        evaluate(cfg)
    except Exception:  # one file failing must not cost the others
        failed += 1
        traceback.print_exc()
    print(f"eval {data or 'held-out split'}: {time.time() - t0:.1f} s", flush=True)
    subprocess.run(["bash", "eval/gpu_collect.sh", run, out, minutes], check=False)  # in OUT before the next
sys.exit(1 if failed else 0)
PY
}

collect() {  # eval/gpu_collect.sh: results.md, the curves and run.tar.gz into OUT (also after each evaluated file)
  bash eval/gpu_collect.sh "$RUN" "$OUT" "$MINUTES"
}

main() {
  local rc=0
  echo "gpu_sudoku.sh: run $RUN, $MINUTES min of training, dry run: $DRY, $(date)"
  environment || return 1
  # the CUDA paths of train and eval on a 2-layer model (~20 s), so a bug costs seconds, not the whole run
  if [ "${DGFT_PREFLIGHT:-1}" = 1 ]; then
    stage preflight 180 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/test_gpu.py \
      -k test_train_and_eval_on_cuda || return 1
  fi
  prepare || rc=1
  # start-up (imports, data, model) about 30 s, then MINUTES in the loop; SIGTERM saves weights and a checkpoint
  stage train "$(awk -v m="$MINUTES" 'BEGIN { print int(m * 60 + 240) }')" python3 -m dgft train "${TRAIN[@]}" || rc=1
  collect > /dev/null  # the training files are in OUT even if evaluation is cut short
  if [ -d "$RUN/model" ]; then
    evaluate_all || rc=1
  else
    echo "no $RUN/model: skipping evaluation"
    rc=1
  fi
  collect
  ls -l "$OUT"
  cat "$OUT/results.md"
  echo "gpu_sudoku.sh: done, rc $rc, $SECONDS s"
  return $rc
}

main 2>&1 | tee "$OUT/log.txt"
