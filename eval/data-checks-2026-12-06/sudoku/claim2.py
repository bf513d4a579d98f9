# claim 2: dgft's augmentation keeps (puzzle, solution) valid and unique; checked with mine.py only
import json, sys, random
sys.path.insert(0, '/tmp/rev_h_work')
import numpy as np
import mine as M
from dgft.tasks.sudoku import grid as G
from dgft.data import TrainBatches
from dgft.cli import compose_train
from dgft.tasks import get_task
from datasets import load_from_disk
D = json.load(open('/tmp/rev_h_work/full.json'))
rng = np.random.default_rng(123); rnd = random.Random(1)
def check(p, s, n, uniq):
    p, s = [int(v) for v in p], [int(v) for v in s]
    ok = M.valid_full(s, n) and all(a == 0 or a == b for a, b in zip(p, s))
    if uniq: ok = ok and M.count_solutions(p, n) == 1
    return ok
for n in (9, 4):
    rows = [r for r in D['train'] if r['size'] == n]
    P = np.stack([G.from_string(r['puzzle']) for r in rows]); S = np.stack([G.from_string(r['solution']) for r in rows])
    # single augment
    bad = sum(not check(*G.augment(P[i], S[i], rng), n, i < 200) for i in range(2000))
    print(n, 'G.augment: 2000 pairs (uniqueness re-counted on 200): bad', bad)
    # batch augment, also on chain puzzles
    L = n*n; orders = np.full((len(rows), L), -1, dtype=np.int64)
    for i, r in enumerate(rows): orders[i, :len(r['order'])] = r['order']
    lo, hi = (18, 36) if n == 9 else (4, 7)
    pick = rng.integers(0, len(rows), 5000)
    pp = G.with_givens_batch(P[pick], S[pick], orders[pick], rng.integers(lo, hi+1, 5000))
    ap, as_ = G.augment_batch(pp, S[pick], rng)
    bad = sum(not check(ap[i], as_[i], n, i < 300) for i in range(5000))
    # givens count preserved, and transformation is non-trivial
    same_g = bool(((ap != 0).sum(1) == (pp != 0).sum(1)).all())
    changed = float((as_ != S[pick]).any(1).mean())
    print(n, 'G.augment_batch on chain puzzles: 5000 pairs (uniqueness on 300): bad', bad, '| givens kept', same_g, '| share changed', changed)
    # invariant sanity: my grid invariant / canon4 preserved under dgft's augmentation (i.e. it is in the group)
    if n == 9:
        inv_ok = all(M.grid_invariant([int(v) for v in as_[i]]) == M.grid_invariant([int(v) for v in S[pick[i]]]) for i in range(200))
        ex = all(M.exact_equiv_grids([int(v) for v in as_[i]], [int(v) for v in S[pick[i]]]) for i in range(3))
        print('   my invariant equal on 200 augmented grids', inv_ok, '| exact equivalence found for 3:', ex)
    else:
        print('   canon4 preserved on 500:', all(M.canon4([int(v) for v in ap[i]]) == M.canon4([int(v) for v in pp[i]]) for i in range(500)))
# end to end: decode TrainBatches examples (recipe=sudoku, augment=true)
cfg = compose_train(["recipe=sudoku", "task.cache_dir=/tmp/rev_h/cache"])
task = get_task(cfg.task)
splits = load_from_disk('/tmp/rev_h/cache/sudoku-317c4f655cb3')
tb = TrainBatches(splits['train'], task, cfg.task, batch_size=64, seed=0)
tot = {4: [0, 0], 9: [0, 0]}
for _ in range(60):
    b = next(tb); n = b['size']
    sol = task.decode(b['target'], n); giv = b['givens'].numpy()
    puz = np.where(giv, sol, 0)
    for i in range(len(sol)):
        tot[n][0] += 1; tot[n][1] += not check(puz[i], sol[i], n, i < 8)
print('TrainBatches (60 batches of 64, decoded): examples/bad per size', tot)
