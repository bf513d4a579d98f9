"""Givens per held-out 9x9 puzzle and symmetry classes among held-out 4x4 puzzles of runs' data/heldout.csv."""
import collections
import sys

from dgft.tasks.sudoku import grid as G
from dgft.tasks.sudoku.io import read_puzzles
from dgft.tasks.sudoku.task import canonical_form

for path in sys.argv[1:]:
    recs, _ = read_puzzles(path)
    givens = collections.Counter(int((r.puzzle != 0).sum()) for r in recs if G.side(r.puzzle) == 9)
    fours = [r.puzzle for r in recs if G.side(r.puzzle) == 4]
    classes = collections.Counter(canonical_form(p) for p in fours)
    print(path, "9x9 givens:", dict(sorted(givens.items())), "| 4x4:", len(fours), "puzzles in", len(classes),
          "classes", sorted(classes.values(), reverse=True))
