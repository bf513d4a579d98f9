#!/usr/bin/env bash
# Build .gpu/ (git-ignored) for eval/gpu_sudoku.sh, here, before a GPU machine is lent: the generated data of
# recipe=sudoku_gpu (30,000 + 200 puzzles per size, about 5 min on one core) packed as .gpu/cache.tar.xz
# (about 3 MB), and the three benchmark files in .gpu/bench/. The GPU machine then spends no minute on data.
#   bash eval/gpu_prepare.sh [extra overrides that change the data, e.g. task.base_puzzles=20000 seed=1]
# The same overrides must then be passed to eval/gpu_sudoku.sh (the cache is keyed by seed and task settings).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
BENCH=${BENCH:-../shared/benchmarks/sudoku}
mkdir -p .gpu/bench .gpu/cache
install -m 644 "$BENCH"/norvig_easy50.csv "$BENCH"/norvig_top95.csv "$BENCH"/d1_4x4_test_sudoku.csv .gpu/bench/
python3 - "$@" <<'PY'
import sys
import tarfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from dgft.cli import recipes_dir
from dgft.config import register
from dgft.data import build_splits, cache_key

register()
with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
    cfg = compose(config_name="train", overrides=["recipe=sudoku_gpu", "task.cache_dir=.gpu/cache", *sys.argv[1:]])
name = f"sudoku-{cache_key(cfg.task, cfg.seed)}"
splits = build_splits(cfg.task, cfg.seed, workers=1)  # one core; the data do not depend on the worker count
print({k: len(v) for k, v in splits.items()}, name)
with tarfile.open(".gpu/cache.tar.xz", "w:xz", preset=9) as tar:
    for f in sorted((Path(".gpu/cache") / name).rglob("*")):
        if f.is_file() and not f.name.startswith("cache-"):  # not the filter caches a training run adds
            tar.add(f, arcname=str(f.relative_to(".gpu/cache")))
PY
rm -rf .gpu/cache  # the tarball travels; eval/gpu_sudoku.sh unpacks it
du -sh .gpu .gpu/*
