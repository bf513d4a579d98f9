# claim 1: uniqueness with my own solver (mine.count_solutions), on base puzzles, chain puzzles, held-out
import json, sys, random, collections, time
sys.path.insert(0, '/tmp/rev_h_work')
import mine as M
D = json.load(open('/tmp/rev_h_work/full.json'))
rnd = random.Random(0)
def givens(p): return sum(1 for v in p if v)
def chain(row, g):
    """training puzzle at g givens: base plus the last-removed cells (as dgft's with_givens, re-implemented)"""
    p = M.parse(row['puzzle']); s = M.parse(row['solution']); order = row['order']
    k = max(0, min(len(order), g - givens(p)))
    for c in order[len(order)-k:]: p[c] = s[c]
    return p
GR = {9: (18, 36), 4: (4, 7)}
res = {}
for split in ('train', 'heldout'):
    for n in (9, 4):
        rows = [r for r in D[split] if r['size'] == n]
        gc = collections.Counter(givens(M.parse(r['puzzle'])) for r in rows)
        sample = rows if (n == 4 or split == 'heldout') else rnd.sample(rows, 300)
        bad = []; t = time.time()
        for r in sample:
            p, s = M.parse(r['puzzle']), M.parse(r['solution'])
            if not M.valid_full(s, n) or any(a and a != b for a, b in zip(p, s)) or M.count_solutions(p, n) != 1:
                bad.append(r['puzzle'])
            # minimality of bases/4x4 heldout: removing any given gives >1 solution
        print(split, n, 'rows', len(rows), 'checked', len(sample), 'not-unique/invalid', len(bad),
              'givens hist', dict(sorted(gc.items())), f'{time.time()-t:.0f}s', flush=True)
        res[(split, n)] = bad
# chain puzzles at random numbers of givens in the training range
for n in (9, 4):
    rows = [r for r in D['train'] if r['size'] == n]
    lo, hi = GR[n]; bad = 0; cnt = 0
    for r in rnd.sample(rows, 300):
        g = rnd.randint(lo, hi); p = chain(r, g); s = M.parse(r['solution'])
        cnt += 1
        if any(a and a != b for a, b in zip(p, s)) or M.count_solutions(p, n) != 1: bad += 1
    print('train chain puzzles', n, 'checked', cnt, 'bad', bad)
# minimality of the base puzzles (they are removal endpoints), 9x9 on 50, 4x4 on all
for n, k in ((9, 50), (4, None)):
    rows = [r for r in D['train'] if r['size'] == n]
    rows = rows if k is None else rnd.sample(rows, k)
    nonmin = 0
    for r in rows:
        p = M.parse(r['puzzle'])
        for i in range(n*n):
            if p[i]:
                q = list(p); q[i] = 0
                if M.count_solutions(q, n) == 1: nonmin += 1; break
    print('base minimality', n, 'checked', len(rows), 'non-minimal', nonmin)
