import sys, time, random
sys.path.insert(0, '/tmp/rev_h_work')
import mine as M
import numpy as np
rnd = random.Random(1)
def my_aug(g, n, rnd):
    b = int(n**.5)
    def lperm():
        bands = list(range(b)); rnd.shuffle(bands)
        out = []
        for B in bands:
            inner = list(range(b)); rnd.shuffle(inner); out += [B*b+i for i in inner]
        return out
    rp, cp = lperm(), lperm()
    lab = list(range(1, n+1)); rnd.shuffle(lab); lab = [0] + lab
    G = [[g[r*n+c] for c in range(n)] for r in range(n)]
    if rnd.random() < .5: G = [list(x) for x in zip(*G)]
    return [lab[G[rp[i]][cp[j]]] for i in range(n) for j in range(n)]
E = [l.split(',') for l in open('/work/shared/benchmarks/sudoku/norvig_easy50.csv').read().split('\n')[1:] if l]
s0 = M.parse(E[0][3]); s1 = M.parse(E[1][3]); p0 = M.parse(E[0][2])
assert M.valid_full(s0, 9)
print('count', M.count_solutions(p0, 9), M.count_solutions([0]*81, 9), M.count_solutions(M.parse(E[1][2]),9))
a = my_aug(s0, 9, rnd)
print('inv equal under aug', M.grid_invariant(a) == M.grid_invariant(s0), M.grid_invariant(s0) == M.grid_invariant(s1))
t = time.time(); print('exact aug', M.exact_equiv_grids(s0, a), time.time()-t)
t = time.time(); print('exact other', M.exact_equiv_grids(s0, s1), time.time()-t)
# puzzle equiv
pa = my_aug(p0, 9, random.Random(5)); sa = my_aug(s0, 9, random.Random(5))
t = time.time(); print('puz equiv aug', M.puzzle_equiv_9(p0, s0, pa, sa), time.time()-t)
p0b = list(p0); k = [i for i in range(81) if p0[i]][0]; p0b[k] = 0
print('puz equiv minus one given', M.puzzle_equiv_9(p0b, s0, pa, sa))
# invariants stable over many augs
ok = all(M.grid_invariant(my_aug(s, 9, rnd)) == M.grid_invariant(s) for s in [M.parse(e[3]) for e in E[:20]] for _ in range(5))
print('invariant stable 100 augs', ok)
# 4x4 canon
D = [l.split(',') for l in open('/work/shared/benchmarks/sudoku/d1_4x4_test_sudoku.csv').read().split('\n')[1:] if l]
ok = all(M.canon4(my_aug(M.parse(d[0]), 4, rnd)) == M.canon4(M.parse(d[0])) for d in D[:100])
print('canon4 stable', ok, 'grid classes 4x4:', len({M.canon4(M.parse(d[1])) for d in D}))
