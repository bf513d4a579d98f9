"""How many givens a minimal 4x4 Sudoku puzzle has (unique solution; no given removable), counted exhaustively.

    python eval/minimal_4x4_givens.py   # ~1 s on one core

Relabelling digits changes no count, so the 12 grids whose first row is 1234 stand for all 288; every subset of
each grid's cells is tried. Prints {givens: minimal puzzles} over those 12 grids (README's 4x4 givens figures).
"""

import itertools
from collections import Counter

import numpy as np


def grids() -> np.ndarray:
    found = []
    for rows in itertools.product(itertools.permutations(range(1, 5)), repeat=4):
        g = np.array(rows)
        if all(len(set(g[:, c])) == 4 for c in range(4)) and all(
                len(set(g[r:r + 2, c:c + 2].ravel())) == 4 for r in (0, 2) for c in (0, 2)):
            found.append(g.ravel())
    return np.array(found)


def main() -> Counter:
    every = grids()
    assert len(every) == 288
    counts = Counter()
    for g in (g for g in every if list(g[:4]) == [1, 2, 3, 4]):
        unique = np.ones(1 << 16, dtype=bool)  # a set of cells is unique unless another grid agrees on all of it
        for other in every:
            if (other == g).all():
                continue
            agree = sum(1 << c for c in range(16) if other[c] == g[c])
            sub = agree
            while True:
                unique[sub] = False
                if sub == 0:
                    break
                sub = (sub - 1) & agree
        for cells in np.flatnonzero(unique):
            cells = int(cells)
            if all(not unique[cells & ~(1 << c)] for c in range(16) if cells >> c & 1):
                counts[bin(cells).count("1")] += 1
    return counts


if __name__ == "__main__":
    print(dict(sorted(main().items())))
