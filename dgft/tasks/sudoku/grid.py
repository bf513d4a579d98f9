"""Sudoku grids: rules, solving, generation and symmetry, as pure functions.

A grid is a 1-D int8 numpy array of n*n cells in row-major order, n in {4, 9}; 0 is a blank and
1..n are digits. Boxes have side b = isqrt(n). For example the 4x4 puzzle

    from_string("1000" "0200" "0030" "0004")   # rows "1 . . .", ". 2 . .", ". . 3 .", ". . . 4"

has 4 givens, `rule_violations` 0 and `count_solutions` 2, so it is not a proper puzzle;
`generate(4, 6, rng)` returns one with 6 givens and exactly one solution.

The solver works on plain Python ints (one candidate bitmask per cell, bit d-1 for digit d) because
numpy's per-element overhead dominates inside a depth-first search.
"""

from __future__ import annotations

from functools import lru_cache
from math import isqrt

import numpy as np

GRID_SIDES = (4, 9)


# --- geometry ---------------------------------------------------------------------------------


def side(cells) -> int:
    """The side n of a grid from its number of cells (16 -> 4, 81 -> 9), over the last axis."""
    length = np.shape(cells)[-1] if np.ndim(cells) else len(cells)
    for n in GRID_SIDES:
        if length == n * n:
            return n
    raise ValueError(f"grid has {length} cells, expected 16 or 81")


@lru_cache(maxsize=None)
def units(n: int) -> np.ndarray:
    """Cell indices of every unit, shape (3n, n): the n rows, then the n columns, then the n boxes."""
    b = isqrt(n)
    index = np.arange(n * n).reshape(n, n)
    boxes = [index[r : r + b, c : c + b].reshape(-1) for r in range(0, n, b) for c in range(0, n, b)]
    table = np.concatenate([index, index.T, np.stack(boxes)]).astype(np.int64)
    table.setflags(write=False)  # cached and shared: keep callers from editing it
    return table


@lru_cache(maxsize=None)
def peers(n: int) -> np.ndarray:
    """Indices of the cells sharing a unit with each cell, shape (n*n, 3n-2b-1): 20 for 9x9, 7 for 4x4."""
    unit_table = units(n)
    table = np.array(
        [sorted(set(unit_table[(unit_table == cell).any(axis=1)].ravel()) - {cell}) for cell in range(n * n)]
    )
    table.setflags(write=False)
    return table


@lru_cache(maxsize=None)
def _cell_units(n: int) -> np.ndarray:
    """For each cell, the indices of its row, column and box in `units(n)`, shape (n*n, 3)."""
    b = isqrt(n)
    row, col = np.divmod(np.arange(n * n), n)
    return np.stack([row, n + col, 2 * n + (row // b) * b + col // b], axis=1)


@lru_cache(maxsize=None)
def _search_tables(n: int) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...], int]:
    """Peers and units as nested tuples of Python ints, plus the all-digits mask, for the solver."""
    peer_lists = tuple(tuple(int(p) for p in row) for row in peers(n))
    unit_lists = tuple(tuple(int(c) for c in row) for row in units(n))
    return peer_lists, unit_lists, (1 << n) - 1


# --- rules ------------------------------------------------------------------------------------


def _digit_counts(grid: np.ndarray) -> np.ndarray:
    """How often each digit occurs in each unit, shape (3n, n)."""
    grid = np.asarray(grid)
    n = side(grid)
    values = grid[units(n)]
    return (values[:, :, None] == np.arange(1, n + 1)).sum(axis=1)


def rule_violations(grid: np.ndarray) -> int:
    """Sum over all units of (filled cells - distinct filled digits); 0 when no rule is broken."""
    return int(np.maximum(_digit_counts(grid) - 1, 0).sum())


def is_solution(grid: np.ndarray, puzzle: np.ndarray | None = None) -> bool:
    """True if `grid` is complete, breaks no rule and, when given, keeps every given of `puzzle`."""
    grid = np.asarray(grid)
    if grid.ndim != 1 or grid.size not in (16, 81) or (grid == 0).any() or rule_violations(grid):
        return False
    if puzzle is None:
        return True
    puzzle = np.asarray(puzzle)
    if puzzle.shape != grid.shape:
        return False
    givens = puzzle != 0
    return bool((puzzle[givens] == grid[givens]).all())


def allowed_digits(grid: np.ndarray) -> np.ndarray:
    """Digits each cell may still take, bool (..., n*n, n) with index d-1 for digit d.

    A blank cell allows the digits absent from its peers; a filled cell allows only its own digit.
    Leading batch axes are kept, so a sampler can pass (B, n*n).
    """
    grid = np.asarray(grid)
    n = side(grid)
    one_hot = grid[..., :, None] == np.arange(1, n + 1)  # (..., N, n)
    present_in_unit = one_hot[..., units(n), :].any(axis=-2)  # (..., 3n, n)
    # A blank cell adds nothing to its own units, so "present in my units" == "present among my peers".
    seen = present_in_unit[..., _cell_units(n), :].any(axis=-2)  # (..., N, n)
    return np.where(one_hot.any(axis=-1, keepdims=True), one_hot, ~seen)


# --- solving ----------------------------------------------------------------------------------


def _propagate(cands: list[int], stack: list[int], peer_lists, unit_lists, full: int) -> bool:
    """Apply naked and hidden singles in place until nothing changes; False on a contradiction.

    `stack` holds cells that became single-valued and whose digit is not yet removed from peers.
    """
    while True:
        while stack:
            cell = stack.pop()
            bit = cands[cell]
            for peer in peer_lists[cell]:
                mask = cands[peer]
                if mask & bit:
                    mask ^= bit
                    if not mask:
                        return False
                    cands[peer] = mask
                    if not mask & (mask - 1):
                        stack.append(peer)
        for unit in unit_lists:
            once = twice = 0
            for cell in unit:
                mask = cands[cell]
                twice |= once & mask
                once |= mask
            if once != full:
                return False  # some digit has no place left in this unit
            only_here = once & ~twice
            if not only_here:
                continue
            for cell in unit:
                mask = cands[cell]
                hit = mask & only_here
                if hit and hit != mask:
                    if hit & (hit - 1):
                        return False  # one cell would need two digits
                    cands[cell] = hit
                    stack.append(cell)
        if not stack:
            return True


def _search(cands, stack, tables, limit: int, rng, found: list[list[int]]) -> None:
    """Depth-first search with propagation and fewest-candidates branching; appends to `found`."""
    peer_lists, unit_lists, full = tables
    if not _propagate(cands, stack, peer_lists, unit_lists, full):
        return
    branch_cell, fewest = -1, full.bit_length() + 1
    for cell, mask in enumerate(cands):
        if mask & (mask - 1):
            count = mask.bit_count()
            if count < fewest:
                branch_cell, fewest = cell, count
                if count == 2:
                    break
    if branch_cell < 0:
        found.append(cands)
        return
    mask = cands[branch_cell]
    bits = [1 << d for d in range(full.bit_length()) if mask >> d & 1]
    if rng is not None:
        rng.shuffle(bits)
    for bit in bits:
        child = cands.copy()
        child[branch_cell] = bit
        _search(child, [branch_cell], tables, limit, rng, found)
        if len(found) >= limit:
            return


def _masks_from_grid(values: list[int], full: int) -> tuple[list[int], list[int]]:
    """Candidate masks (givens single, blanks full) and the given cells to propagate first."""
    cands = [1 << (v - 1) if v else full for v in values]
    return cands, [cell for cell, v in enumerate(values) if v]


def _find_solutions(values: list[int], n: int, limit: int, rng=None, exclude: tuple[int, int] | None = None):
    """Solutions of a grid given as Python ints, as lists of masks; `exclude` = (cell, digit) forbidden."""
    tables = _search_tables(n)
    cands, stack = _masks_from_grid(values, tables[2])
    if exclude is not None:
        cell, digit = exclude
        cands[cell] &= ~(1 << (digit - 1))
        if not cands[cell]:
            return []
        if not cands[cell] & (cands[cell] - 1):
            stack.append(cell)
    found: list[list[int]] = []
    _search(cands, stack, tables, limit, rng, found)
    return found


def solve(puzzle: np.ndarray, limit: int = 2, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Up to `limit` distinct solutions of `puzzle`; [] if it has none or its givens break a rule.

    With `rng`, branches try digits in random order (used to draw random full grids).
    """
    puzzle = np.asarray(puzzle)
    n = side(puzzle)
    if rule_violations(puzzle):
        return []
    found = _find_solutions([int(v) for v in puzzle], n, limit, rng)
    return [np.array([mask.bit_length() for mask in masks], dtype=np.int8) for masks in found]


def singles_solvable(puzzle: np.ndarray) -> bool:
    """Whether naked and hidden singles alone (no guessing) solve `puzzle`: the class of Norvig's easy50.

    Used to break held-out results down by difficulty, so a sampler can be judged on easy puzzles without
    looking at a benchmark.
    """
    puzzle = np.asarray(puzzle)
    if rule_violations(puzzle):
        return False
    peer_lists, unit_lists, full = _search_tables(side(puzzle))
    cands, stack = _masks_from_grid([int(v) for v in puzzle], full)
    if not _propagate(cands, stack, peer_lists, unit_lists, full):
        return False
    return all(not mask & (mask - 1) for mask in cands)


def count_solutions(puzzle: np.ndarray, limit: int = 2) -> int:
    """Number of solutions of `puzzle`, counting no further than `limit`."""
    return len(solve(puzzle, limit=limit))


# --- generation -------------------------------------------------------------------------------


def random_solution(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random complete valid n x n grid (randomised search from the empty grid; not exactly uniform)."""
    return solve(np.zeros(n * n, dtype=np.int8), limit=1, rng=rng)[0]


def _remove_cells(solution: list[int], n: int, givens: int, rng) -> tuple[list[int], list[int]]:
    """Blank cells of `solution` in random order while the solution stays unique, down to `givens`.

    Removing cell c keeps uniqueness iff no solution has a different digit at c, which is a
    one-solution search (cheaper than counting two). A cell that cannot be removed now never can
    later, since removing more givens only adds solutions; so each cell is tried once.
    """
    peer_lists = _search_tables(n)[0]
    puzzle = list(solution)
    filled = n * n
    removed: list[int] = []
    for cell in rng.permutation(n * n).tolist():
        if filled <= givens:
            break
        digit = puzzle[cell]
        puzzle[cell] = 0
        # Fast path: the peers' givens still force this digit (a naked single), so it is safe.
        forced = len({puzzle[p] for p in peer_lists[cell]} - {0}) == n - 1
        if forced or not _find_solutions(puzzle, n, limit=1, exclude=(cell, digit)):
            removed.append(cell)
            filled -= 1
        else:
            puzzle[cell] = digit
    return puzzle, removed


def generate(
    n: int, givens: int, rng: np.random.Generator, max_tries: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A puzzle with a unique solution and `givens` givens: (puzzle, solution, removal_order).

    Cells are removed from a random full grid in random order while the solution stays unique.
    If a grid gets stuck above `givens`, fresh grids are tried, up to `max_tries`, and the attempt
    with the fewest givens is returned (so `givens=0, max_tries=1` gives one minimal puzzle).
    `removal_order` lists the removed cells in order: see `with_givens`.
    """
    best = None
    for _ in range(max_tries):
        solution = random_solution(n, rng)
        puzzle, removed = _remove_cells(solution.tolist(), n, givens, rng)
        if best is None or len(removed) > len(best[2]):
            best = (puzzle, solution, removed)
        if n * n - len(removed) <= givens:
            break
    puzzle, solution, removed = best
    return np.array(puzzle, dtype=np.int8), solution, np.array(removed, dtype=np.int64)


def with_givens(puzzle: np.ndarray, solution: np.ndarray, removal_order: np.ndarray, givens: int) -> np.ndarray:
    """`puzzle` with the last-removed cells given back until it has `givens` givens.

    Each such puzzle was a step of the removal, so it has the same unique solution. `givens` is
    clamped to [givens of puzzle, givens of puzzle + len(removal_order)].
    """
    order = np.asarray(removal_order, dtype=np.int64).reshape(1, -1)
    return with_givens_batch(np.asarray(puzzle)[None], np.asarray(solution)[None], order, np.array([givens]))[0]


def with_givens_batch(puzzles: np.ndarray, solutions: np.ndarray, removal_orders: np.ndarray,
                      givens: np.ndarray) -> np.ndarray:
    """`with_givens` for a batch: puzzles, solutions (B, L); removal_orders (B, L) padded with -1 at the end;
    givens (B,). Row i equals `with_givens(puzzles[i], solutions[i], its order, givens[i])`."""
    puzzles = np.array(puzzles, dtype=np.int8)
    length = (removal_orders >= 0).sum(1)
    extra = np.clip(np.asarray(givens) - (puzzles != 0).sum(1), 0, length)
    j = np.arange(removal_orders.shape[1])
    rows, cols = np.nonzero((j >= (length - extra)[:, None]) & (j < length[:, None]))
    cells = removal_orders[rows, cols]
    puzzles[rows, cells] = np.asarray(solutions)[rows, cells]
    return puzzles


# --- symmetry ---------------------------------------------------------------------------------


def _line_permutation(b: int, rng: np.random.Generator) -> np.ndarray:
    """A random order of n = b*b lines that keeps bands together: shuffle bands, then lines inside each."""
    return np.concatenate([band * b + rng.permutation(b) for band in rng.permutation(b)])


def random_symmetry(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random validity-preserving transform as index maps: (cells (L,), digits (n+1,)).

    The transformed grid is `digits[grid[cells]]`: position j shows the digit of cell cells[j], relabelled
    (0 stays 0): line swaps within bands and stacks, band and stack swaps, transpose, relabelling.
    """
    b = isqrt(n)
    rows, cols = _line_permutation(b, rng), _line_permutation(b, rng)
    digits = np.concatenate([[0], rng.permutation(n) + 1]).astype(np.int64)
    cells = (rows[:, None] * n + cols[None, :])
    if rng.random() < 0.5:
        cells = cells.T
    return cells.reshape(-1), digits


def augment(puzzle: np.ndarray, solution: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random validity-preserving transform (`random_symmetry`) applied to `puzzle` and `solution`.

    Digits are relabelled, rows shuffled within bands and bands shuffled, columns likewise within
    stacks, and the grid is transposed with probability 1/2.
    """
    cells, digits = random_symmetry(side(solution), rng)
    return digits[np.asarray(puzzle)[cells]].astype(np.int8), digits[np.asarray(solution)[cells]].astype(np.int8)


def _line_permutations(b: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random line orders at once, shape (count, b*b): as `_line_permutation`, per row."""
    bands = np.argsort(rng.random((count, b)), axis=1)
    inner = np.argsort(rng.random((count, b, b)), axis=2)
    return (bands[:, :, None] * b + inner).reshape(count, b * b)


def augment_batch(puzzles: np.ndarray, solutions: np.ndarray, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """`augment` for a batch (B, L): an independent random transform per row, the same for puzzle and solution."""
    B, L = np.shape(solutions)
    n = isqrt(L)
    b = isqrt(n)
    rows, cols = _line_permutations(b, B, rng), _line_permutations(b, B, rng)
    relabel = np.concatenate([np.zeros((B, 1), dtype=np.int64), np.argsort(rng.random((B, n)), axis=1) + 1], 1)
    transpose = rng.random(B) < 0.5
    cells = rows[:, :, None] * n + cols[:, None, :]  # per row, as `random_symmetry`'s cell map
    cells = np.where(transpose[:, None, None], cells.transpose(0, 2, 1), cells).reshape(B, L)

    def transform(grids: np.ndarray) -> np.ndarray:
        moved = np.take_along_axis(np.asarray(grids, dtype=np.int64), cells, axis=1)
        return np.take_along_axis(relabel, moved, axis=1).astype(np.int8)

    return transform(puzzles), transform(solutions)


def _cycle_type(mapping: list[int]) -> tuple[int, ...]:
    """Sorted cycle lengths of a permutation of range(len(mapping))."""
    seen = [False] * len(mapping)
    lengths = []
    for start in range(len(mapping)):
        length, item = 0, start
        while not seen[item]:
            seen[item] = True
            item = mapping[item]
            length += 1
        if length:
            lengths.append(length)
    return tuple(sorted(lengths))


def _line_pair_signature(square: np.ndarray, b: int) -> tuple:
    """Label-free fingerprint of a full grid's rows: for each pair of rows, the cycle type of the
    digit permutation that maps row i's digit in a column to row j's digit in the same column.

    Column permutations leave each pair's permutation unchanged, relabelling only conjugates it,
    and band-preserving row shuffles only reorder the pairs: so the sorted multisets, kept apart
    for same-band and cross-band pairs, are invariant.
    """
    n = len(square)
    rows = (square - 1).tolist()
    same_band, cross_band = [], []
    for i in range(n):
        for j in range(i + 1, n):
            mapping = [0] * n
            for a, c in zip(rows[i], rows[j]):
                mapping[a] = c
            (same_band if i // b == j // b else cross_band).append(_cycle_type(mapping))
    return tuple(sorted(same_band)), tuple(sorted(cross_band))


def invariant(solution: np.ndarray) -> tuple:
    """A value shared by all `augment`s of a full grid, for checking held-out sets against training.

    One-sided: different invariants prove two grids are not equivalent; equal invariants do not
    prove they are. It is (number of unavoidable rectangles, row and column pair signatures in
    sorted order, so transposition cannot change it). An unavoidable rectangle is four cells
    a b / b a in two rows and two columns spanning exactly two boxes; each is a 2-cycle of a
    same-band row pair or a same-stack column pair (the two cases cannot overlap).
    """
    n = side(solution)
    b = isqrt(n)
    square = np.asarray(solution).reshape(n, n).astype(np.int64)
    row_signature = _line_pair_signature(square, b)
    col_signature = _line_pair_signature(square.T, b)
    rectangles = sum(cycles.count(2) for cycles in row_signature[0] + col_signature[0])
    return (rectangles, *sorted([row_signature, col_signature]))


# --- text -------------------------------------------------------------------------------------


def to_string(grid: np.ndarray, blank: str = "0") -> str:
    """Row-major digits, one character per cell, blanks as `blank`."""
    return "".join(str(int(v)) if v else blank for v in np.asarray(grid))


def from_string(s: str, what: str = "grid") -> np.ndarray:
    """Parse a 16- or 81-character grid ('0' or '.' for blanks); ValueError names what is wrong.

    `what` names the field in error messages, e.g. "puzzle has 80 characters, expected 16 or 81 (one a cell)".
    """
    s = s.strip()
    if len(s) not in (16, 81):
        spaces = sum(char.isspace() for char in s)
        inside = f", {spaces} of them white space inside the grid" if spaces else ""
        raise ValueError(f"{what} has {len(s)} characters{inside}, expected 16 or 81 (one a cell)")
    n = isqrt(len(s))
    for position, char in enumerate(s):
        if char != "." and not ("0" <= char <= str(n)):
            raise ValueError(f"{what} has bad character {char!r} at character {position + 1}, row {position // n + 1}, "
                             f"column {position % n + 1} (expected 0-{n} or '.')")
    return np.array([0 if char == "." else int(char) for char in s], dtype=np.int8)
