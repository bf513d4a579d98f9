"""Sudoku grid logic: rules, solver, generator, augmentation and invariants."""

import csv
import itertools

import numpy as np
import pytest

from dgft.tasks.sudoku.grid import (
    allowed_digits,
    augment,
    augment_batch,
    count_solutions,
    from_string,
    generate,
    invariant,
    is_solution,
    peers,
    random_solution,
    rule_violations,
    side,
    singles_solvable,
    solve,
    to_string,
    units,
    with_givens,
    with_givens_batch,
)
from tests.conftest import SHARED

BENCHMARKS = SHARED / "benchmarks" / "sudoku"
needs_benchmarks = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="benchmark files not present")

SOLVED_4 = from_string("1234" "3412" "2143" "4321")


def _rows(name):
    with open(BENCHMARKS / name) as f:
        return list(csv.DictReader(f))


def test_side_and_geometry():
    assert side(np.zeros(16)) == 4 and side(np.zeros(81)) == 9
    with pytest.raises(ValueError, match="80 cells"):
        side(np.zeros(80))
    assert units(9).shape == (27, 9) and units(4).shape == (12, 4)
    assert peers(9).shape == (81, 20) and peers(4).shape == (16, 7)
    # every unit is a permutation of the cells it covers; each cell is in exactly 3 units
    assert np.bincount(units(9).ravel()).tolist() == [3] * 81
    assert 0 not in peers(9)[0] and {1, 9, 10, 20} <= set(peers(9)[0].tolist())


def test_string_round_trip_and_errors():
    text = "1.3." "..12" "21.." ".3.1"
    grid = from_string(text)
    assert grid.dtype == np.int8 and grid.tolist()[:4] == [1, 0, 3, 0]
    assert to_string(grid, blank=".") == text
    assert from_string(to_string(grid)).tolist() == grid.tolist()
    with pytest.raises(ValueError, match="80 characters"):
        from_string("0" * 80)
    with pytest.raises(ValueError, match=r"'x' at character 6, row 2, column 2 "):
        from_string("00000x" + "0" * 10)
    with pytest.raises(ValueError, match=r"'5' at character 1, row 1, column 1 "):
        from_string("5" + "0" * 15)  # digit too large for 4x4


def test_rule_violations_counts_duplicates():
    assert rule_violations(SOLVED_4) == 0
    assert rule_violations(np.zeros(81, dtype=np.int8)) == 0
    grid = np.zeros(81, dtype=np.int8)
    grid[0] = grid[1] = 5  # same row and same box: two broken units
    assert rule_violations(grid) == 2
    grid[2] = 5  # three 5s in one row and box: 2 extra per unit
    assert rule_violations(grid) == 4


def test_is_solution():
    assert is_solution(SOLVED_4)
    puzzle = SOLVED_4.copy()
    puzzle[1:] = 0
    assert is_solution(SOLVED_4, puzzle)
    puzzle[0] = 2
    assert not is_solution(SOLVED_4, puzzle)
    broken = SOLVED_4.copy()
    broken[[0, 1]] = broken[[1, 0]]
    assert not is_solution(broken)
    incomplete = SOLVED_4.copy()
    incomplete[3] = 0
    assert not is_solution(incomplete)


def test_allowed_digits_matches_brute_force():
    rng = np.random.default_rng(0)
    for n in (4, 9):
        grid = random_solution(n, rng)
        grid[rng.random(n * n) < 0.6] = 0
        allowed = allowed_digits(grid)
        assert allowed.shape == (n * n, n) and allowed.dtype == bool
        for cell in range(n * n):
            if grid[cell]:
                expected = {int(grid[cell])}
            else:
                expected = set(range(1, n + 1)) - {int(grid[p]) for p in peers(n)[cell]}
            assert {d + 1 for d in np.flatnonzero(allowed[cell])} == expected
        # batched input gives the same answer per grid
        assert (allowed_digits(np.stack([grid, grid]))[1] == allowed).all()


@needs_benchmarks
def test_solver_finds_listed_unique_solutions():
    for row in _rows("norvig_top95.csv")[:5] + _rows("norvig_easy50.csv")[:3]:
        solutions = solve(from_string(row["puzzle"]), limit=2)
        assert [to_string(s) for s in solutions] == [row["solution"]]


@needs_benchmarks
def test_count_solutions_on_d1_matches_readme():
    rows = _rows("d1_4x4_test_sudoku.csv")
    counts = [count_solutions(from_string(row["Puzzle"])) for row in rows]
    assert min(counts) == 1
    assert sum(count > 1 for count in counts) == 124  # as stated in the benchmarks README


def test_count_solutions_multiple_and_none():
    assert count_solutions(np.zeros(16, dtype=np.int8), limit=1000) == 288  # all 4x4 grids
    assert count_solutions(from_string("1000" "0200" "0030" "0004")) == 2
    assert count_solutions(from_string("1100" + "0" * 12)) == 0  # givens break a rule
    # no rule broken, yet no solution: cell 3 can hold neither 1, 2 nor 3, and 4 is in its column
    assert solve(from_string("1230" "0000" "0000" "0004")) == []
    # the search stops at `limit`, never one beyond it
    assert len(solve(np.zeros(16, dtype=np.int8), limit=5)) == 5
    assert count_solutions(np.zeros(81, dtype=np.int8), limit=2) == 2


def test_random_solution_is_valid_and_varies():
    rng = np.random.default_rng(1)
    grids = [random_solution(9, rng) for _ in range(10)]
    assert all(is_solution(g) for g in grids)
    assert len({to_string(g) for g in grids}) == 10


@pytest.mark.parametrize("n, givens", [(9, 30), (4, 6)])
def test_generate_unique_with_requested_givens(n, givens):
    rng = np.random.default_rng(2)
    for _ in range(5):
        puzzle, solution, order = generate(n, givens, rng)
        assert int((puzzle != 0).sum()) == givens
        assert is_solution(solution, puzzle)
        assert [to_string(s) for s in solve(puzzle)] == [to_string(solution)]
        assert len(order) == n * n - givens and set(order.tolist()) == set(np.flatnonzero(puzzle == 0).tolist())


def test_with_givens_keeps_uniqueness():
    rng = np.random.default_rng(3)
    puzzle, solution, order = generate(9, 0, rng, max_tries=1)  # a minimal puzzle
    start = int((puzzle != 0).sum())
    assert 17 <= start < 40
    for target in range(start, 82, 7):
        more = with_givens(puzzle, solution, order, target)
        assert int((more != 0).sum()) == target
        assert count_solutions(more) == 1 and is_solution(solution, more)
    assert (with_givens(puzzle, solution, order, 0) == puzzle).all()  # clamped
    assert (with_givens(puzzle, solution, order, 100) == solution).all()


@pytest.mark.parametrize("n", [4, 9])
def test_augment_keeps_validity_and_consistency(n):
    rng = np.random.default_rng(4)
    puzzle, solution, _ = generate(n, 6 if n == 4 else 30, rng)
    for _ in range(20):
        new_puzzle, new_solution = augment(puzzle, solution, rng)
        assert new_puzzle.dtype == np.int8 and new_puzzle.shape == puzzle.shape
        assert is_solution(new_solution, new_puzzle)
        assert (new_puzzle != 0).sum() == (puzzle != 0).sum()
        assert count_solutions(new_puzzle) == 1


def test_with_givens_batch_matches_with_givens_row_by_row():
    rng = np.random.default_rng(6)
    rows = [generate(9, 0, rng, max_tries=1) for _ in range(12)]
    puzzles, solutions = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
    orders = np.full((12, 81), -1)
    for i, (_, _, order) in enumerate(rows):
        orders[i, :len(order)] = order
    givens = np.array([0, 100, *rng.integers(17, 60, 10)])  # clamped at both ends, then random
    got = with_givens_batch(puzzles, solutions, orders, givens)
    want = np.stack([with_givens(p, s, o, g) for p, s, o, g in zip(puzzles, solutions, [r[2] for r in rows], givens)])
    assert got.dtype == np.int8 and np.array_equal(got, want)
    assert np.array_equal(puzzles, np.stack([r[0] for r in rows]))  # inputs untouched


@pytest.mark.parametrize("n", [4, 9])
def test_augment_batch_transforms_each_row_validly_and_independently(n):
    rng = np.random.default_rng(7)
    puzzle, solution, _ = generate(n, 6 if n == 4 else 30, rng)
    B = 64
    new_puzzles, new_solutions = augment_batch(np.tile(puzzle, (B, 1)), np.tile(solution, (B, 1)), rng)
    assert new_puzzles.dtype == np.int8 and new_puzzles.shape == (B, n * n)
    for p, s in zip(new_puzzles, new_solutions):
        assert is_solution(s, p) and (p != 0).sum() == (puzzle != 0).sum()
        assert invariant(s) == invariant(solution)  # a symmetry of the same grid
    assert len({p.tobytes() for p in new_puzzles}) > B // 2  # rows draw their own transforms
    # transposed in about half the rows: givens only in the top row land in one row, or in one column if transposed
    top = np.where(np.arange(n * n) < n, solution, 0).astype(np.int8)
    moved, _ = augment_batch(np.tile(top, (B, 1)), np.tile(solution, (B, 1)), rng)
    given_rows = [len(set(np.flatnonzero(m) // n)) for m in moved]
    assert set(given_rows) == {1, n} and 0.25 < given_rows.count(n) / B < 0.75


def test_invariant_is_preserved_by_augment():
    rng = np.random.default_rng(5)
    for n in (4, 9):
        for _ in range(5):
            grid = random_solution(n, rng)
            for _ in range(20):
                assert invariant(augment(grid, grid, rng)[1]) == invariant(grid)
            assert invariant(grid.reshape(n, n).T.reshape(-1)) == invariant(grid)


def test_invariant_separates_random_grids():
    rng = np.random.default_rng(6)
    invariants = [invariant(random_solution(9, rng)) for _ in range(100)]
    # measured: all 100 (and 300 in a longer run) random 9x9 grids get distinct invariants
    assert len(set(invariants)) == 100
    # 4x4 grids fall into exactly two classes under these symmetries; the invariant sees both
    assert len({invariant(random_solution(4, rng)) for _ in range(50)}) == 2


def test_invariant_counts_unavoidable_rectangles():
    grid = random_solution(9, np.random.default_rng(7))
    square = grid.reshape(9, 9)
    brute_force = 0
    for r1, r2 in itertools.combinations(range(9), 2):
        for c1, c2 in itertools.combinations(range(9), 2):
            a, b = square[r1, c1], square[r1, c2]
            boxes = {(r // 3, c // 3) for r in (r1, r2) for c in (c1, c2)}
            if square[r2, c1] == b and square[r2, c2] == a and len(boxes) == 2:
                brute_force += 1
    assert invariant(grid)[0] == brute_force


def test_singles_solvable():
    holes = SOLVED_4.copy()
    holes[[0, 5, 10, 15]] = 0  # each blank alone in its row: naked singles
    assert singles_solvable(holes)
    assert not singles_solvable(np.zeros(16, dtype=np.int8))
    assert not singles_solvable(from_string("1000" "0200" "0030" "0004"))  # two solutions
    assert not singles_solvable(from_string("1100" + "0" * 12))  # breaks a rule


@needs_benchmarks
def test_singles_solvable_separates_easy_from_hard():
    easy = [singles_solvable(from_string(r["puzzle"])) for r in _rows("norvig_easy50.csv")]
    hard = [singles_solvable(from_string(r["puzzle"])) for r in _rows("norvig_top95.csv")]
    assert sum(easy) == 40 and sum(hard) == 0
