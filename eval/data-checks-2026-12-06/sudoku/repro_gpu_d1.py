# Reproduction: recipe=sudoku_gpu's training batches contain d1 4x4 benchmark puzzles (up to symmetry).
# Needs the 4x4 data of recipe=sudoku_gpu (seed 0): built by gen_any.py into /tmp/rev_h_work/cache_gpu4 with
# task.sizes=[4] task.size_weights=[1.0] (4x4 rows are seeded per size: SeedSequence([seed, n, tag, round]), data.py:78,
# so they equal those of sizes=[9,4]).
import sys, csv, glob
sys.path.insert(0, '/tmp/rev_h_work')
import numpy as np
import mine as M
from datasets import load_from_disk
from dgft.cli import compose_train
from dgft.tasks import get_task
from dgft.data import TrainBatches, _givens_range
cfg = compose_train(["recipe=sudoku_gpu", "task.cache_dir=/tmp/rev_h_work/cache_gpu4", "task.sizes=[4]", "task.size_weights=[1.0]"])
print("4x4 givens range trained:", _givens_range(4, cfg.task.blank_fraction), "blank_fraction", list(cfg.task.blank_fraction))
task = get_task(cfg.task)
splits = load_from_disk(glob.glob('/tmp/rev_h_work/cache_gpu4/sudoku-*')[0])
d1 = {}
for i, r in enumerate(csv.DictReader(open('/work/shared/benchmarks/sudoku/d1_4x4_test_sudoku.csv'))):
    d1.setdefault(M.canon4(M.parse(r['Puzzle'])), []).append((i + 2, r['Puzzle']))
tb = TrainBatches(splits['train'], task, cfg.task, batch_size=512, seed=cfg.seed)
hits, n8, seen = [], 0, set()
for step in range(10):
    b = next(tb)
    sol = task.decode(b['target'], 4); giv = b['givens'].numpy()
    for i in range(len(sol)):
        p = [int(v) for v in np.where(giv[i], sol[i], 0)]
        if sum(1 for v in p if v) == 8:
            n8 += 1
            c = M.canon4(p)
            if c in d1:
                hits.append((step, i, ''.join(map(str, p)), d1[c][0])); seen.add(c)
print(f"10 batches x 512: {n8} examples with 8 givens; {len(hits)} are equivalent to a d1 benchmark puzzle "
      f"({len(seen)} distinct d1 classes)")
for h in hits[:5]: print("  batch", h[0], "row", h[1], "trained puzzle", h[2], "== d1 csv line", h[3][0], h[3][1])
