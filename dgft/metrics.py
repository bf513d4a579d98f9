"""Sudoku scores as an offline `evaluate` module (no hub fetch), plus the per-puzzle scoring it uses.

An answer is `exact` when it is a complete grid that keeps every given and breaks no rule: validity,
not equality with the listed solution, since some 4x4 puzzles (d1's set) have several completions; a
unique-solution 9x9 puzzle has only one valid answer anyway. `cell_accuracy` counts blank cells equal
to the puzzle's solution closest to the answer (all of them when the answer is valid): the listed solution when
the puzzle has only one, else whichever of its solutions (the first SOLUTIONS_CONSIDERED found, and the listed
one) agrees with the answer on the most blank cells, so an answer on its way to another valid completion is not
marked wrong where it differs from the listed one. Over puzzles with no blank cell at all (fully given puzzles,
which puzzle files may hold) there is nothing to score and `cell_accuracy` is None (null in JSON, "n/a" in the
eval tables), not 0.0: such an answer can be exact, and a 0% beside 100% exact would read as a failure.
Likewise `givens_kept` is averaged over the puzzles that have givens (an empty grid has none to keep, and counting
it as 1.0 would raise the figure with nothing tested), and is None when none has any.

Predictions, references and puzzles are 81- or 16-character strings of digits ('0' or '.' blank), as dgft's tasks
decode a canvas (`task.decode`): a model's raw text (rows on lines, an end-of-turn marker) is decoded to that first.
A prediction that is not a grid of the puzzle's size (model text cut short, a stray character) scores as an empty
answer: not exact, no blank cell right, no given kept, and counts in `malformed`. A puzzle or reference that is not
a grid is a ValueError naming its index.

Example: `SudokuAccuracy().compute(predictions=["1234..."], references=["1234..."], puzzles=["1200..."])`
-> {"n": 1, "exact": 1.0, "cell_accuracy": 1.0, "givens_kept": 1.0, "rule_violations": 0.0, "malformed": 0}.
"""

from __future__ import annotations

from functools import lru_cache

import datasets
import evaluate
import numpy as np

from dgft.tasks.sudoku import grid as G


SOLUTIONS_CONSIDERED = 64  # d1's 4x4 puzzles have at most 4; a unique 9x9 puzzle has 1


@lru_cache(maxsize=8192)
def _solutions(puzzle: bytes) -> tuple[np.ndarray, ...]:
    return tuple(G.solve(np.frombuffer(puzzle, dtype=np.int8).astype(int), limit=SOLUTIONS_CONSIDERED))


def closest_solution(puzzle: np.ndarray, solution: np.ndarray, answer: np.ndarray) -> np.ndarray:
    """The puzzle's solution that agrees with `answer` on the most blank cells (the listed `solution` on ties)."""
    blanks = puzzle == 0
    best, right = solution, int(((answer == solution) & blanks).sum())
    for other in _solutions(np.asarray(puzzle, dtype=np.int8).tobytes()):
        hits = int(((answer == other) & blanks).sum())
        if hits > right:
            best, right = other, hits
    return best


def score_answer(puzzle: np.ndarray, solution: np.ndarray, answer: np.ndarray) -> dict:
    """One puzzle's scores; arrays are 1-D digits with 0 for blank or empty."""
    blanks = puzzle == 0
    givens = ~blanks
    exact = bool(G.is_solution(answer, puzzle))
    if exact:
        right = int(blanks.sum())
    else:
        right = int(((answer == closest_solution(puzzle, solution, answer)) & blanks).sum())
    return {"exact": exact, "blanks_right": right, "blanks": int(blanks.sum()),
            "givens_kept": float((answer[givens] == puzzle[givens]).mean()) if givens.any() else None,
            "rule_violations": int(G.rule_violations(answer))}


def aggregate(scores: list[dict]) -> dict:
    """Scores of many puzzles -> n, exact, cell_accuracy, givens_kept, rule_violations (mean per puzzle).

    cell_accuracy is over all the puzzles' blank cells together, and None when they have none (no puzzles, or
    only fully given ones): no blank cells to score. givens_kept is the mean over the puzzles with givens, and
    None when there are none (no puzzles, or only empty grids): no givens to keep.
    """
    n = len(scores)
    if n == 0:
        return {"n": 0, "exact": 0.0, "cell_accuracy": None, "givens_kept": None, "rule_violations": 0.0}
    blanks = sum(s["blanks"] for s in scores)
    kept = [s["givens_kept"] for s in scores if s["givens_kept"] is not None]
    return {"n": n, "exact": sum(s["exact"] for s in scores) / n,
            "cell_accuracy": sum(s["blanks_right"] for s in scores) / blanks if blanks else None,
            "givens_kept": sum(kept) / len(kept) if kept else None,
            "rule_violations": sum(s["rule_violations"] for s in scores) / n}


class SudokuAccuracy(evaluate.Metric):
    """Exact (valid and complete), blank-cell accuracy, givens kept and rule violations of Sudoku answers."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="81- or 16-char strings, '0' for blank",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string"),
                                        "puzzles": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, puzzles):
        scores, malformed = [], 0
        for i, (a, r, p) in enumerate(zip(predictions, references, puzzles)):
            try:
                puzzle, solution = G.from_string(p, what="puzzle"), G.from_string(r, what="reference")
                if solution.shape != puzzle.shape:
                    raise ValueError(f"reference has {len(solution)} cells, the puzzle {len(puzzle)}")
            except ValueError as error:
                raise ValueError(f"SudokuAccuracy: example {i}: {error}") from None
            try:
                answer = G.from_string(a, what="prediction")
                if answer.shape != puzzle.shape:
                    raise ValueError("not the puzzle's size")
            except ValueError:
                answer, malformed = np.zeros_like(puzzle), malformed + 1
            scores.append(score_answer(puzzle, solution, answer))
        return {**aggregate(scores), "malformed": malformed}
