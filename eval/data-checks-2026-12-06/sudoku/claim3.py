# claim 3: held-out vs training, and both vs the benchmarks, up to the full symmetry group (mine.py only)
import json, sys, csv, collections, time
sys.path.insert(0, '/tmp/rev_h_work')
import mine as M
path = sys.argv[1] if len(sys.argv) > 1 else '/tmp/rev_h_work/full.json'
D = json.load(open(path))
B = '/work/shared/benchmarks/sudoku/'
def rd(f):
    with open(B + f) as fh: return list(csv.DictReader(fh))
bench9 = [(r['id'], M.parse(r['puzzle']), M.parse(r['solution'])) for f in ('norvig_easy50.csv', 'norvig_top95.csv') for r in rd(f)]
bench4 = [(f'd1:{i+2}', M.parse(r['Puzzle']), M.parse(r['Solution'])) for i, r in enumerate(rd('d1_4x4_test_sudoku.csv'))]
for name, bp, bs in bench9:
    assert M.valid_full(bs, 9) and all(a == 0 or a == b for a, b in zip(bp, bs)), name
print('benchmark 9x9 solutions valid and consistent:', len(bench9))
def givens(p): return sum(1 for v in p if v)
def chain_all(row, lo, hi):
    p = M.parse(row['puzzle']); s = M.parse(row['solution']); order = row['order']; g0 = givens(p)
    out = []
    for g in range(max(lo, g0), hi + 1):
        k = min(len(order), g - g0); q = list(p)
        for c in order[len(order)-k:]: q[c] = s[c]
        out.append(tuple(q))
    return out or [tuple(p)]
# ---------------- 9x9 ----------------
t = time.time()
tr9 = [r for r in D['train'] if r['size'] == 9]; ho9 = [r for r in D['heldout'] if r['size'] == 9]
inv_tr = collections.defaultdict(list)
for i, r in enumerate(tr9): inv_tr[M.grid_invariant(M.parse(r['solution']))].append(i)
inv_ho = collections.defaultdict(list)
for i, r in enumerate(ho9): inv_ho[M.grid_invariant(M.parse(r['solution']))].append(i)
inv_b = collections.defaultdict(list)
for i, (_, _, s) in enumerate(bench9): inv_b[M.grid_invariant(s)].append(i)
print(f'9x9 invariants: train {len(tr9)} grids -> {len(inv_tr)} classes; heldout {len(ho9)} -> {len(inv_ho)}; bench {len(bench9)} -> {len(inv_b)}  ({time.time()-t:.0f}s)')
def exact_pairs(A, Ainv, Bl, Binv, label):
    cands = [(i, j) for k in set(Ainv) & set(Binv) for i in Ainv[k] for j in Binv[k]]
    eq = [(i, j) for i, j in cands if M.exact_equiv_grids(A[i], Bl[j])]
    print(f'  {label}: invariant collisions {len(cands)}, exactly equivalent solution grids {len(eq)}', eq[:10])
    return eq
S_tr = [M.parse(r['solution']) for r in tr9]; S_ho = [M.parse(r['solution']) for r in ho9]; S_b = [s for _, _, s in bench9]
exact_pairs(S_ho, inv_ho, S_tr, inv_tr, 'heldout vs train')
exact_pairs(S_b, inv_b, S_tr, inv_tr, 'bench vs train')
exact_pairs(S_b, inv_b, S_ho, inv_ho, 'bench vs heldout')
# also: within-train duplicate grids (information only)
dup = sum(len(v) - 1 for v in inv_tr.values())
print('  train grids sharing an invariant with another train grid:', dup)
# ---------------- 4x4 ----------------
t = time.time()
tr4 = [r for r in D['train'] if r['size'] == 4]; ho4 = [r for r in D['heldout'] if r['size'] == 4]
memo = {}
def canon(p):
    p = tuple(p)
    if p not in memo: memo[p] = M.canon4(list(p))
    return memo[p]
train_chain = collections.defaultdict(list)   # canonical form -> (base index, givens)
train_base = collections.defaultdict(list)
for i, r in enumerate(tr4):
    train_base[canon(M.parse(r['puzzle']))].append(i)
    for q in chain_all(r, 4, 7): train_chain[canon(q)].append((i, givens(q)))
print(f'4x4: train {len(tr4)} bases -> {len(train_base)} base classes; all training puzzles (chains, 4-7 givens) -> {len(train_chain)} classes ({time.time()-t:.0f}s)')
ho_c = [canon(M.parse(r['puzzle'])) for r in ho4]
hit = [(j, ho4[j]['puzzle'], train_chain[c][:3]) for j, c in enumerate(ho_c) if c in train_chain]
print(f'  heldout {len(ho4)} puzzles ({len(set(ho_c))} classes) equivalent to a training puzzle: {len(hit)}', hit[:5])
b_c = [canon(p) for _, p, _ in bench4]
bg = collections.Counter(givens(p) for _, p, _ in bench4)
bu = collections.Counter(M.count_solutions(p, 4) for _, p, _ in bench4)
print('  d1 givens hist', dict(sorted(bg.items())), 'solution counts (cap 2)', dict(bu))
hit_tr = [(bench4[j][0], ''.join(map(str, bench4[j][1])), train_chain[c][:2]) for j, c in enumerate(b_c) if c in train_chain]
hit_trb = [j for j, c in enumerate(b_c) if c in train_base]
hit_ho = [(bench4[j][0], ''.join(map(str, bench4[j][1]))) for j, c in enumerate(b_c) if c in set(ho_c)]
print(f'  d1 puzzles equivalent to a TRAINING puzzle (any chain step): {len(hit_tr)} of {len(bench4)} '
      f'({len({b_c[int(x[0].split(":")[1])-2] for x in hit_tr})} classes); to a training BASE puzzle: {len(hit_trb)}')
print('   e.g.', hit_tr[:5])
print(f'  d1 puzzles equivalent to a HELD-OUT puzzle: {len(hit_ho)}', hit_ho[:5])
json.dump({'d1_train_hits': hit_tr, 'd1_heldout_hits': hit_ho}, open(path.replace('.json', '_claim3_4x4.json'), 'w'))
