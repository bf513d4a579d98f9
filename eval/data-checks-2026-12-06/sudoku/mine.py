"""Independent Sudoku helpers (written from scratch; no dgft imports)."""
import itertools
from math import isqrt
import numpy as np

def parse(s):
    return [0 if c in "0." else int(c) for c in s.strip()]

def geometry(n):
    b = isqrt(n)
    units = []
    for r in range(n): units.append([r*n+c for c in range(n)])
    for c in range(n): units.append([r*n+c for r in range(n)])
    for br in range(0, n, b):
        for bc in range(0, n, b):
            units.append([(br+i)*n+bc+j for i in range(b) for j in range(b)])
    peers = [set() for _ in range(n*n)]
    for u in units:
        for x in u:
            peers[x] |= set(u)
    for x in range(n*n): peers[x].discard(x)
    return units, [sorted(p) for p in peers]

GEOM = {4: geometry(4), 9: geometry(9)}

def valid_full(g, n):
    """every row/col/box is a permutation of 1..n"""
    if len(g) != n*n or any(v < 1 or v > n for v in g): return False
    units, _ = GEOM[n]
    return all(sorted(g[i] for i in u) == list(range(1, n+1)) for u in units)

def givens_consistent(p, n):
    units, _ = GEOM[n]
    for u in units:
        vals = [p[i] for i in u if p[i]]
        if len(vals) != len(set(vals)): return False
    return True

def count_solutions(p, n, limit=2):
    """plain backtracking with most-constrained-cell choice; counts up to `limit`."""
    if not givens_consistent(p, n): return 0
    _, peers = GEOM[n]
    g = list(p)
    full = set(range(1, n+1))
    count = 0
    def rec():
        nonlocal count
        best, bestc = -1, None
        for i in range(n*n):
            if g[i] == 0:
                c = full - {g[j] for j in peers[i]}
                if not c: return
                if bestc is None or len(c) < len(bestc):
                    best, bestc = i, c
                    if len(c) == 1: break
        if best < 0:
            count += 1; return
        for d in bestc:
            g[best] = d
            rec()
            g[best] = 0
            if count >= limit: return
    rec()
    return count

# ---- symmetry group (geometric) --------------------------------------------------------------
def line_perms(n):
    b = isqrt(n)
    out = []
    for bands in itertools.permutations(range(b)):
        for inner in itertools.product(itertools.permutations(range(b)), repeat=b):
            out.append([bands[i]*b + inner[i][j] for i in range(b) for j in range(b)])
    return out

def relabel_min(seq):
    m = {}
    return tuple(0 if v == 0 else m.setdefault(v, len(m)+1) for v in seq)

def canon4(p):
    """exact canonical form of a 4x4 puzzle (or grid) under the full group: min over 2*8*8 geometric x relabel."""
    n = 4
    lp = line_perms(4)
    best = None
    A = [p[r*4:(r+1)*4] for r in range(4)]
    for T in (False, True):
        M = [[A[c][r] for c in range(4)] for r in range(4)] if T else A
        for rp in lp:
            for cp in lp:
                s = relabel_min([M[rp[i]][cp[j]] for i in range(4) for j in range(4)])
                if best is None or s < best: best = s
    return best

# ---- cheap 9x9 invariant: digit-pair permutation cycle types (dual to dgft's row-pair one) ----
def cycle_type(perm):
    seen = [False]*len(perm); out = []
    for s in range(len(perm)):
        if not seen[s]:
            L = 0; x = s
            while not seen[x]:
                seen[x] = True; x = perm[x]; L += 1
            out.append(L)
    return tuple(sorted(out))

def grid_invariant(g, n=9):
    """For digits a<b: pi_ab = col_b o col_a^{-1} (columns->columns). Row perms leave it fixed, column perms
    conjugate it, relabelling permutes the pairs, transpose maps it to a conjugate of its inverse: the multiset of
    cycle types is invariant under the whole group (even arbitrary line permutations). Refined with the
    multiset of per-band/per-stack digit-triple structures below."""
    col = [[0]*n for _ in range(n+1)]  # col[d][r]
    for r in range(n):
        for c in range(n):
            col[g[r*n+c]][r] = c
    inv = {}
    for d in range(1, n+1):
        inv[d] = [0]*n
        for r in range(n): inv[d][col[d][r]] = r
    types = []
    for a in range(1, n+1):
        for b in range(a+1, n+1):
            types.append(cycle_type([col[b][inv[a][c]] for c in range(n)]))
    return tuple(sorted(types)) + (minirow_profile(g, n),)

def minirow_profile(g, n=9):
    """Sorted multiset over (rows and columns together, symmetric under transpose) of how a band's 9 mini-row
    digit triples are shared: for each band, the sorted count of distinct triples - invariant under all group ops."""
    b = isqrt(n)
    A = [g[r*n:(r+1)*n] for r in range(n)]
    def bands(M):
        out = []
        for B in range(b):
            trip = [frozenset(M[B*b+i][S*b:(S+1)*b]) for i in range(b) for S in range(b)]
            # for each stack, how many of its mini-row triples reappear in other stacks of the band
            out.append(sum(1 for t in trip if trip.count(t) > 1))
        return tuple(sorted(out))
    T = [[A[c][r] for c in range(n)] for r in range(n)]
    return tuple(sorted([bands(A), bands(T)]))

# ---- exact 9x9 equivalence of two full grids (brute force, numpy) -----------------------------
_LP9 = None
def exact_equiv_grids(g1, g2, n=9):
    """True iff some geometric transform x relabelling maps full grid g1 onto g2. Vectorised over all
    2 * 1296 * 1296 transforms (relabelling fixed by the first row)."""
    global _LP9
    if _LP9 is None: _LP9 = np.array(line_perms(n))
    lp = _LP9
    A = np.array(g1, dtype=np.int64).reshape(n, n)
    B = np.array(g2, dtype=np.int64).reshape(n, n)
    for M in (A, A.T):
        R = M[lp]                       # (1296, 9, 9) rows permuted
        for ci in range(0, len(lp), 108):
            cps = lp[ci:ci+108]
            X = R[:, :, cps]            # (1296, 9, 108, 9)
            X = X.transpose(0, 2, 1, 3)  # (1296, 108, 9rows, 9cols)
            # relabel so the first row maps onto B's first row: map[X[...,0,j]] = B[0,j]
            first = X[:, :, 0, :]        # (1296,108,9)
            mp = np.zeros(X.shape[:2] + (n+1,), dtype=np.int64)
            np.put_along_axis(mp, first, np.broadcast_to(B[0], first.shape), axis=2)
            Y = np.take_along_axis(mp, X.reshape(X.shape[0], X.shape[1], -1), axis=2)
            if (Y == B.reshape(1, 1, -1)).all(axis=2).any():
                return True
    return False

def puzzle_equiv_9(p1, s1, p2, s2, n=9):
    """exact: some transform maps (p1,s1) onto (p2,s2) with p1's givens onto p2's givens (same digits)."""
    global _LP9
    if _LP9 is None: _LP9 = np.array(line_perms(n))
    lp = _LP9
    A = np.array(s1).reshape(n, n); PA = np.array(p1).reshape(n, n)
    B = np.array(s2).reshape(n, n); PB = np.array(p2).reshape(n, n).reshape(-1)
    for M, PM in ((A, PA), (A.T, PA.T)):
        R = M[lp]; PR = PM[lp]
        for ci in range(0, len(lp), 108):
            cps = lp[ci:ci+108]
            X = R[:, :, cps].transpose(0, 2, 1, 3); PX = PR[:, :, cps].transpose(0, 2, 1, 3)
            first = X[:, :, 0, :]
            mp = np.zeros(X.shape[:2] + (n+1,), dtype=np.int64)
            np.put_along_axis(mp, first, np.broadcast_to(B[0], first.shape), axis=2)
            Y = np.take_along_axis(mp, X.reshape(X.shape[0], X.shape[1], -1), axis=2)
            ok = (Y == B.reshape(1, 1, -1)).all(axis=2)
            if ok.any():
                mask = (PX.reshape(PX.shape[0], PX.shape[1], -1) != 0)
                if ((mask == (PB != 0)[None, None, :]) & ok[:, :, None]).all(axis=2).any():
                    return True
    return False
