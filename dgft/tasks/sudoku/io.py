"""Reading and writing Sudoku puzzle files, with errors that name the file and line.

Two formats are read. Plain text has one 16- or 81-character grid a line ('0' or '.' for blanks;
blank lines and lines starting with '#' are ignored). CSV (fields separated by commas, tabs or semicolons: whichever
splits out a grid) has a puzzle column and optionally a solution column, found by header name (an exact
`puzzle`/`solution` before a name that merely contains one) or, without a header, by position; line 1 is a
header when it has a column name (a field starting with a letter) and nothing like a grid. A CSV line starting with
'#' is a comment unless its puzzle field is mostly digits: a grid, right or not (a cell off, a typo; the line's '#'
an id such as `#12` in a first column): a record is never dropped as a comment.

    Puzzle,Solution                       <- line 1: header ('puzzle'/'quiz', 'solution' columns)
    3102200002100320,3142243142131324     <- line 2: a 4x4 record, source "file.csv:2"

`read_puzzles("file.csv")` returns the records and the messages of any skipped lines.
"""

from __future__ import annotations

import csv
import io as _io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgft.tasks.sudoku.grid import from_string, is_solution, rule_violations, side, solve, to_string, units

_HEADER_FIELD = re.compile(r"[A-Za-z_].*")  # a column name (`Puzzle`, `puzzle-string`, `Puzzle (81)`): grids start
                                            # with a digit or '.'
_NOT_A_GRID = re.compile(r".*[A-Za-z].*|[0-9]{1,4}")  # a word (a name, a level) or a short number (a rating)
_GRID_FIELD = re.compile(r"[0-9.]{16}(?:[0-9.]{65})?")  # a 16- or 81-character grid: never a column name
_GRID_LIKE = re.compile(r"[0-9.]{10,}")  # a grid with a cell too many or too few: a bad record, never a column name
_PUZZLE_NAMES = ("puzzle", "puzzles", "quiz", "quizzes")  # exact column names, before any name containing one
_SOLUTION_NAMES = ("solution", "solutions")
SOLVING_BAR_FROM = 100  # lines: a file without solutions this long shows a progress bar while its puzzles are solved


class PuzzleFileError(ValueError):
    """A puzzle file cannot be read; the message starts with "file:line:" or "file:"."""


@dataclass
class SudokuRecord:
    """One puzzle, its solution (None when unknown) and where it came from ("file:line")."""

    puzzle: np.ndarray
    solution: np.ndarray | None
    source: str

    @property
    def givens(self) -> int:
        """Number of filled cells in the puzzle."""
        return int((self.puzzle != 0).sum())


def _first_conflict(grid: np.ndarray) -> str:
    """Where a grid first repeats a digit, e.g. "digit 5 twice in row 3" (1-based)."""
    n = side(grid)
    values = grid[units(n)]
    for unit_index, unit_values in enumerate(values):
        digits, counts = np.unique(unit_values[unit_values != 0], return_counts=True)
        if (counts > 1).any():
            kind = ("row", "column", "box")[unit_index // n]
            digit = int(digits[counts > 1][0])
            return f"digit {digit} repeated in {kind} {unit_index % n + 1}"
    return "no repeated digit"


def check_record(puzzle_text: str, solution_text: str | None, check_solvable: bool) -> tuple:
    """Parse and validate one puzzle (and solution); ValueError describes the first problem."""
    puzzle = from_string(puzzle_text, what="puzzle")
    other = re.fullmatch(r"[0-9.]{16}|[0-9.]{81}", (solution_text or "").strip())  # a whole grid, of which size
    if other and len(other.group()) != puzzle.size:  # said before its digits are read as the puzzle's size's
        n, m = side(puzzle), int(round(len(other.group()) ** 0.5))
        raise ValueError(f"puzzle is {n}x{n} but solution is {m}x{m}")
    solution = from_string(solution_text, what="solution") if solution_text else None
    if rule_violations(puzzle):
        raise ValueError(f"puzzle givens break a rule: {_first_conflict(puzzle)}")
    if solution is not None:
        n_puzzle, n_solution = side(puzzle), side(solution)
        if n_puzzle != n_solution:
            raise ValueError(f"puzzle is {n_puzzle}x{n_puzzle} but solution is {n_solution}x{n_solution}")
        if (solution == 0).any():
            raise ValueError(f"solution has {int((solution == 0).sum())} blank cells")
        if rule_violations(solution):
            raise ValueError(f"solution breaks a rule: {_first_conflict(solution)}")
        if not is_solution(solution, puzzle):
            cell = int(np.flatnonzero((puzzle != 0) & (puzzle != solution))[0])
            n = side(puzzle)
            raise ValueError(
                f"solution contradicts the given {puzzle[cell]} at row {cell // n + 1}, column {cell % n + 1}"
            )
    elif check_solvable:
        solutions = solve(puzzle, limit=1)
        if not solutions:
            raise ValueError("puzzle has no solution")
        solution = solutions[0]
    return puzzle, solution


def _read_text(path: Path, name: str) -> str:
    """The file as text (UTF-8, a byte-order mark dropped); an unreadable file is a PuzzleFileError naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PuzzleFileError(f"{name}: file not found") from None
    except OSError as error:
        raise PuzzleFileError(f"{name}: cannot read it ({error.strerror or error})") from None
    if data.startswith(b"\x1f\x8b"):
        raise PuzzleFileError(f"{name}: gzip-compressed; puzzle files are plain text (decompress it; a .jsonl.gz "
                              "of infilling problems is for infill runs)")
    head = data[:200]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(head) >= 4 and any(head)  # all NUL: not text at all
                                                       and not (head[1::2].strip(b"\0") and head[0::2].strip(b"\0"))):
        raise PuzzleFileError(f"{name}: UTF-16 text (as some Windows editors and Excel save it); puzzle files are "
                              "UTF-8: save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise PuzzleFileError(f"{name}:{line}: not UTF-8 text (byte {data[error.start]:#04x}); puzzle files hold "
                              "digits, '.', commas and a header") from None


def _data_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) for every line that is not blank ('#' lines included: which of them are
    comments depends on the format).

    Lines end at '\\n' alone (a '\\r' before it goes with the stripping), as an editor counts them: `splitlines`
    would also break at form feeds, '\\x1c'-'\\x1e', '\\x85' and '\\u2028', shifting every later line number.
    """
    end = "\r" if "\n" not in text and "\r" in text else "\n"  # classic Mac OS line ends: '\r' alone
    numbered = ((number, line.strip()) for number, line in enumerate(text.split(end), start=1))
    return [(number, line) for number, line in numbered if line]


def _is_comment(line: str, delimiter: str | None, puzzle_column: int) -> bool:
    """A '#' line that is not a record: in plain text every one; in a CSV, one whose puzzle field is not, or not
    nearly, a grid (`#12,<grid>,<solution>` under an `id,puzzle,solution` header is record 12, and a bad one if its
    grid is a cell short)."""
    if not line.startswith("#"):
        return False
    if delimiter is None:
        return True
    fields = _split(line, delimiter)
    if len(fields) <= puzzle_column:
        return True
    field = fields[puzzle_column]  # the '#' in it: a row commented out (`#<puzzle>,<solution>`), not an id before it
    return field.startswith("#") or not _grid_ish(field)


def _grid_ish(field: str) -> bool:
    """A field that is meant as a grid, right or not: fourteen characters or more (a 4x4 grid two cells short), spaces
    aside, all digits or '.' but for two at most (a typo), or with '-', '_' or '*' as the blank (six or more of it):
    a grid a cell off, or with a typo, spaces or '-' blanks in it, is a bad record to name, never a comment to drop.
    A comment's words, a date or a time (2026-01-01 12:00: three others) are not."""
    cells = field.replace(" ", "")
    others = [c for c in cells if c not in "0123456789."]
    blank = next((b for b in "-_*" if cells.count(b) >= 6), None)
    return len(cells) >= 14 and sum(c != blank for c in others) <= 2


def _delimiter(first: str, second: str | None) -> str | None:
    """The field separator of a file whose first data lines are `first` and `second`: a comma, a tab or a semicolon,
    whichever splits out a grid (from the first line, else from the second, after a header), in that order of
    preference when none or several do; None: plain text (a one-column CSV's header, a bare column name, is read
    with commas). A semicolon file with decimal commas in a column (`<puzzle>;<solution>;1,5`) is read on its
    semicolons."""
    present = [d for d in (",", "\t", ";") if d in first]
    if not present:
        return "," if _HEADER_FIELD.fullmatch(first) else None
    for line in (first, second):
        for delimiter in present:
            if line is not None and any(_GRID_FIELD.fullmatch(f) for f in _split(line, delimiter)):
                return delimiter
    return present[0]


def _split(line: str, delimiter: str) -> list[str]:
    """`_fields` that never raises (a line the csv module refuses: no fields)."""
    try:
        return _fields(line, delimiter)
    except ValueError:
        return []


def _fields(line: str, delimiter: str = ",") -> list[str]:
    """The stripped fields of one CSV line; a line the csv module refuses is a ValueError saying why."""
    try:
        return [field.strip() for field in next(csv.reader([line], delimiter=delimiter, skipinitialspace=True))]
    except csv.Error as error:
        raise ValueError(f"not a CSV row: {error}") from None


def _is_header(fields: list[str]) -> bool:
    """Line 1 of a CSV is a header when some field looks like a column name and none is, or nearly is, a grid (a
    headerless file's first record may carry a word too, such as `3102200002100320,3142243142131324,easy`, and its
    grid may be a cell short: a bad record, not a header)."""
    return any(_HEADER_FIELD.fullmatch(f) for f in fields) and not any(_GRID_LIKE.fullmatch(f) for f in fields)


def _solution_beside(lines: list[tuple[int, str]], delimiter: str) -> int | None:
    """A headerless CSV's solution column: the second field, unless the first line whose first field is a grid
    carries a word or a short number there (`<puzzle>,easy`, `<puzzle>,3`: no solutions in the file). Lines before
    it (`0,1`, the header pandas writes for unnamed columns) are bad records, not what decides."""
    for _, line in lines:
        fields = _split(line, delimiter)
        if fields and _GRID_FIELD.fullmatch(fields[0]):
            return None if len(fields) > 1 and _NOT_A_GRID.fullmatch(fields[1]) else 1
    return 1


def _pick(names: list[str], exact: tuple[str, ...], parts: tuple[str, ...], what: str, header: list[str],
          where: str, exclude: int | None = None) -> int | None:
    """The one column named exactly one of `exact`, else the one whose name contains `parts[0]`, then `parts[1]`
    ...; None when none does. Two candidates at the same level are ambiguous: a PuzzleFileError naming both."""
    tiers = [[i for i, name in enumerate(names) if name in exact]]
    tiers += [[i for i, name in enumerate(names) if part in name] for part in parts]
    for tier in tiers:
        tier = [i for i in tier if i != exclude]
        if len(tier) > 1:
            both = ", ".join(repr(header[i]) for i in tier)
            raise PuzzleFileError(f"{where}: header {header} has {len(tier)} columns that could be the {what} "
                                  f"({both}); name exactly one of them {exact[0]!r}")
        if tier:
            return tier[0]
    return None


def _columns(header: list[str], where: str) -> tuple[int, int | None]:
    """Indices of the puzzle and (optional) solution columns named in a CSV header: an exact name (puzzle,
    puzzles, quiz, quizzes; solution, solutions) first, else a name containing 'puzzle' (then 'quiz'; 'solution')."""
    names = [name.lower() for name in header]
    puzzle_column = _pick(names, _PUZZLE_NAMES, ("puzzle", "quiz"), "puzzle", header, where)
    if puzzle_column is None:
        raise PuzzleFileError(f"{where}: header {header} has no puzzle column (a name containing 'puzzle' or 'quiz')")
    solution_column = _pick(names, _SOLUTION_NAMES, ("solution",), "solution", header, where, exclude=puzzle_column)
    return puzzle_column, solution_column


def repeats(records: list[SudokuRecord]) -> str | None:
    """None when every puzzle is different; else how many appear again, with the first pair's places."""
    seen: dict[bytes, str] = {}
    again = []
    for rec in records:
        key = rec.puzzle.tobytes()
        if key in seen:
            again.append((seen[key], rec.source))
        else:
            seen[key] = rec.source
    if not again:
        return None
    return (f"{len(again)} puzzle{'s' * (len(again) > 1)} repeat{'s' * (len(again) == 1)} an earlier one (first: "
            f"{again[0][1]} is {again[0][0]})")


def read_puzzles(
    path: str | Path, on_error: str = "raise", check_solvable: bool = True, limit: int | None = None
) -> tuple[list[SudokuRecord], list[str]]:
    """Records of a plain-text or CSV puzzle file, and one message per skipped bad line.

    on_error="raise" raises PuzzleFileError at the first bad line; "skip" skips it and returns its
    message instead. Without a solution column and with `check_solvable`, each puzzle is solved
    (first solution found) and unsolvable ones are bad lines; otherwise `solution` is None.
    `limit`: stop after that many records (the lines after them are not read, so not counted as skipped).
    A missing file, a file with no puzzles or a CSV header without a puzzle column always raises. A headerless
    CSV's second field is the solution column unless the first line's is a word or a short number (`<puzzle>,easy`,
    `<puzzle>,3`); a row of empty fields (a spreadsheet's `,,`) is a blank line.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    name = str(path)
    text = _read_text(Path(path), name)
    lines = _data_lines(text)
    uncommented = [(number, line) for number, line in lines if not line.startswith("#")]
    if not uncommented:
        records = next((number for number, line in lines for d in (",", "\t", ";")  # `#<id>,<grid>`, not a row
                        if (fields := _split(line, d))[1:] and not _grid_ish(fields[0][1:])  # commented out whole
                        and any(_grid_ish(f) for f in fields[1:])), None)
        if records is not None:  # `#1,<grid>,<solution>` lines with no header to say which field is the puzzle
            raise PuzzleFileError(f"{name}:{records}: every line starts with '#', so each is a comment, though this "
                                  "one holds a grid; a CSV whose records start with a '#' id needs a header line "
                                  "(e.g. id,puzzle,solution) naming its columns")
        raise PuzzleFileError(f"{name}: no puzzles in file")

    excel = re.fullmatch(r"sep=([,;]?)", uncommented[0][1])  # Excel's first line naming its separator (a tab is
    # stripped with the line's white space)
    if excel:
        lines = [(number, line) for number, line in lines if number != uncommented[0][0]]
        uncommented = uncommented[1:]
        if not uncommented:
            raise PuzzleFileError(f"{name}: no puzzles in file (only Excel's separator line)")
    first = uncommented[0][1]
    if first.startswith(("{", "[")):
        raise PuzzleFileError(f"{name}:{uncommented[0][0]}: JSON, not a puzzle line; puzzle files hold one grid per "
                              "line or CSV (JSON lines of infilling problems are for infill runs)")
    delimiter = _delimiter(first, uncommented[1][1] if len(uncommented) > 1 else None)
    if excel:
        delimiter = excel.group(1) or "\t"
    is_csv = delimiter is not None
    puzzle_column, solution_column, header_line = 0, None, None
    if is_csv:
        while len(uncommented) > 1:  # a spreadsheet's empty rows (`,,`) before the header
            fields = _split(uncommented[0][1], delimiter)
            if not fields or any(fields):  # a row the csv module refuses, or one with something in it
                break
            uncommented = uncommented[1:]
        start, first = uncommented[0]
        header = _split(first, delimiter)  # not even a CSV row: a bad first record, reported (or skipped) below
        if _is_header(header):
            puzzle_column, solution_column = _columns(header, f"{name}:{start}")
            header_line, start = start, start + 1
        else:
            solution_column = _solution_beside(uncommented, delimiter)
        lines = [(number, line) for number, line in lines if number >= start]

    records: list[SudokuRecord] = []
    skipped: list[str] = []
    solving = check_solvable and solution_column is None  # each puzzle solved for its label
    bar = _solving_bar(name, min(len(lines), limit or len(lines))) if solving else None
    try:
        for number, line in lines:
            if limit is not None and len(records) >= limit:
                break
            if bar is not None:
                bar.update()
            if _is_comment(line, delimiter, puzzle_column):
                continue
            where = f"{name}:{number}"
            try:
                fields = _fields(line, delimiter) if is_csv else [line]
                if not any(fields):
                    continue  # a row of empty fields: a blank line
                if len(fields) <= puzzle_column:
                    raise ValueError(f"row has {len(fields)} fields, the puzzle is in field {puzzle_column + 1}")
                has_solution = solution_column is not None and solution_column < len(fields)
                solution_text = fields[solution_column] if has_solution else None
                puzzle, solution = check_record(fields[puzzle_column], solution_text, check_solvable)
            except ValueError as error:
                message = f"{where}: {error}"
                if on_error == "raise":
                    raise PuzzleFileError(message) from None
                skipped.append(message)
                continue
            records.append(SudokuRecord(puzzle=puzzle, solution=solution, source=where))
    finally:
        if bar is not None:
            bar.close()

    if not records and not skipped and header_line is not None:
        raise PuzzleFileError(f"{name}: no puzzles in file (only its header, line {header_line})")
    if not records:
        first = f"; first: {skipped[0]}" if skipped else ""
        raise PuzzleFileError(f"{name}: no valid puzzles ({len(skipped)} lines skipped{first})")
    return records, skipped


def _solving_bar(name: str, lines: int):
    """A progress bar for reading a file without solutions, whose every puzzle the reference solver solves (a hard
    9x9 can take seconds): shown from SOLVING_BAR_FROM lines, on stderr, gone when the file is read."""
    if lines < SOLVING_BAR_FROM:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=lines, desc=f"{Path(name).name}: solving (no solution column)", unit="line", leave=False)


def write_puzzles(path: str | Path, records: list[SudokuRecord]) -> None:
    """Write records as CSV with a `puzzle,solution` header ('0' blanks; empty solution if unknown)."""
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["puzzle", "solution"])
    for record in records:
        writer.writerow([to_string(record.puzzle), "" if record.solution is None else to_string(record.solution)])
    Path(path).write_text(buffer.getvalue())
