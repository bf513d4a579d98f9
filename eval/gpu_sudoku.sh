#!/usr/bin/env bash
# The GPU run, end to end on one machine: train recipe=sudoku_gpu (33M parameters) from scratch for MINUTES
# minutes on the data pre-generated in .gpu/ by `bash eval/gpu_prepare.sh`, evaluate the run on the three
# benchmark files (every sampling mode + the untrained baseline) and on its held-out split, and copy to OUT_DIR:
# log.txt, results.md, train_summary.json, loss.png, metrics.jsonl and run.tar.gz (eval/*.json|md|png,
# config.yaml, run.json, data/heldout.csv).
#   bash eval/gpu_sudoku.sh OUT_DIR [MINUTES] [train overrides ...]       # MINUTES: 5 unless given; 4.5 works
# Wall time: MINUTES + about 2.5 min (checks 30 s, start-up 30 s, saving 10 s, evaluation 1 min); each stage has
# its own timeout, and the files are collected whatever happened before.
# Needs .gpu/cache.tar.xz and .gpu/bench/ (carry ".gpu"); without the tarball the data are generated (~1 min).
# Works with dgft installed or only on PYTHONPATH (it runs `python3 -m dgft`).
# DGFT_DRY_RUN=1: every stage on the CPU in a few minutes (a 2-layer model, 3 steps, 4 puzzles per file, 2 views).
# DGFT_PREFLIGHT=0 skips the preflight stage, tests/test_gpu.py (the CUDA paths on a tiny model, about 20 s).
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
import sys
import tarfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from dgft.cli import recipes_dir
from dgft.config import register
from dgft.data import cache_key

register()
with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
    cfg = compose(config_name="train", overrides=[o for o in sys.argv[1:] if not o.startswith("hydra.")])
name = f"sudoku-{cache_key(cfg.task, cfg.seed)}"
cache, packed = Path(cfg.task.cache_dir), Path(".gpu/cache.tar.xz")
if not (cache / name / "dataset_dict.json").exists() and packed.exists():
    with tarfile.open(packed) as tar:
        members = tar.getnames()
        tar.extractall(cache, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    print(f"unpacked {packed} ({packed.stat().st_size / 1e6:.1f} MB): {sorted({m.split('/')[0] for m in members})}")
if (cache / name / "dataset_dict.json").exists():
    print(f"data: {cache / name} (found)")
else:
    print(f"data: {cache / name} missing (the tarball holds other settings?): train will generate "
          f"{cfg.task.base_puzzles} + {cfg.task.heldout_puzzles} puzzles per size first")
PY
}

evaluate_all() {  # `dgft eval` per file, in one process: the model loads in a second, python and CUDA in ten
  stage eval 300 python3 - "$RUN" "${EVAL[@]}" <<'PY'
import sys
import time
import traceback

from hydra import compose, initialize_config_dir

from dgft.cli import recipes_dir
from dgft.config import register
from dgft.evaluate import evaluate

register()
run, extra = sys.argv[1], sys.argv[2:]
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
sys.exit(1 if failed else 0)
PY
}

collect() {  # at most 8 files come back: a summary, the curves, and the rest in one tarball
  local f
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
    (cd "$RUN" && tar czf "$OUT/run.tar.gz" $(ls -d eval config.yaml run.json data/heldout.csv 2>/dev/null))
  fi
  ls -l "$OUT"
  cat "$OUT/results.md"
}

main() {
  local rc=0
  echo "gpu_sudoku.sh: run $RUN, $MINUTES min of training, dry run: $DRY, $(date)"
  environment || return 1
  # the CUDA paths of train and eval on a 2-layer model (~20 s), so a bug costs seconds, not the whole run
  if [ "${DGFT_PREFLIGHT:-1}" = 1 ]; then
    stage preflight 180 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/test_gpu.py || return 1
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
  echo "gpu_sudoku.sh: done, rc $rc, $SECONDS s"
  return $rc
}

main 2>&1 | tee "$OUT/log.txt"
