"""Reading and writing Sudoku puzzle files: formats, bad lines, benchmark files."""

import numpy as np
import pytest

from dgft.tasks.sudoku.grid import from_string, is_solution, to_string
from dgft.tasks.sudoku.io import PuzzleFileError, SudokuRecord, read_puzzles, write_puzzles
from tests.conftest import SHARED

BENCHMARKS = SHARED / "benchmarks" / "sudoku"
needs_benchmarks = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="benchmark files not present")

PUZZLE_4 = "3102200002100320"  # first row of d1's 4x4 set
SOLUTION_4 = "3142243142131324"
PUZZLE_9 = "003020600900305001001806400008102900700000008006708200002609500800203009005010300"
SOLUTION_9 = "483921657967345821251876493548132976729564138136798245372689514814253769695417382"


def _write(tmp_path, text, name="puzzles.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_plain_text_with_comments_dots_and_mixed_sizes(tmp_path):
    path = _write(tmp_path, f"# a comment\n\n{PUZZLE_9.replace('0', '.')}\n{PUZZLE_4}\n", "puzzles.txt")
    records, skipped = read_puzzles(path)
    assert skipped == []
    assert [to_string(r.puzzle) for r in records] == [PUZZLE_9, PUZZLE_4]
    assert [to_string(r.solution) for r in records] == [SOLUTION_9, SOLUTION_4]  # filled by the solver
    assert [r.source for r in records] == [f"{path}:3", f"{path}:4"]
    assert records[0].givens == 32 and records[0].puzzle.dtype == np.int8


def test_csv_header_finds_columns_in_any_order(tmp_path):
    path = _write(tmp_path, f"id,Solution,clues,quizzes\nx,{SOLUTION_4},8,{PUZZLE_4}\n")
    (record,), _ = read_puzzles(path)
    assert to_string(record.puzzle) == PUZZLE_4 and to_string(record.solution) == SOLUTION_4
    assert record.source == f"{path}:2"


def test_headerless_csv_and_unchecked_puzzles(tmp_path):
    path = _write(tmp_path, f"{PUZZLE_4},{SOLUTION_4}\n{PUZZLE_4}\n")
    records, _ = read_puzzles(path)
    assert [to_string(r.solution) for r in records] == [SOLUTION_4, SOLUTION_4]
    records, _ = read_puzzles(_write(tmp_path, f"{PUZZLE_4}\n", "plain.txt"), check_solvable=False)
    assert records[0].solution is None


def test_write_read_round_trip(tmp_path):
    records = [
        SudokuRecord(from_string(PUZZLE_9), from_string(SOLUTION_9), "a"),
        SudokuRecord(from_string(PUZZLE_4), None, "b"),
    ]
    path = tmp_path / "out.csv"
    write_puzzles(path, records)
    assert path.read_text().splitlines()[0] == "puzzle,solution"
    back, _ = read_puzzles(path)
    assert [to_string(r.puzzle) for r in back] == [PUZZLE_9, PUZZLE_4]
    assert to_string(back[0].solution) == SOLUTION_9 and is_solution(back[1].solution, back[1].puzzle)
    back, _ = read_puzzles(path, check_solvable=False)
    assert back[1].solution is None


WRONG_SOLUTION_4 = SOLUTION_4[1] + SOLUTION_4[0] + SOLUTION_4[2:]  # swapped: breaks two columns
CONTRADICTING_4 = "4213" "3142" "1324" "2431"  # valid grid, but its first cell is not the given 3
BAD_LINES = {
    "wrong length": (f"{PUZZLE_4[:-1]},", "puzzle has 15 characters, expected 16 or 81"),
    "bad character": (f"31x2{PUZZLE_4[4:]},", "puzzle has bad character 'x' at character 3, row 1, column 3"),
    "solution bad character": (f"{PUZZLE_4},{SOLUTION_4[:-1]}?", "solution has bad character '?'"),
    "size mismatch": (f"{PUZZLE_4},{SOLUTION_9}", "puzzle is 4x4 but solution is 9x9"),
    "givens break a rule": ("3300" + "0" * 12 + ",", "puzzle givens break a rule: digit 3 repeated in row 1"),
    "invalid solution": (f"{PUZZLE_4},{WRONG_SOLUTION_4}", "solution breaks a rule"),
    "incomplete solution": (f"{PUZZLE_4},0{SOLUTION_4[1:]}", "solution has 1 blank cells"),
    "contradicting solution": (f"{PUZZLE_4},{CONTRADICTING_4}", "solution contradicts the given 3 at row 1, column 1"),
    "no solution": ("1230" "0000" "0000" "0004,", "puzzle has no solution"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_raises_or_is_skipped(tmp_path, case):
    line, problem = BAD_LINES[case]
    path = _write(tmp_path, f"puzzle,solution\n{PUZZLE_4},{SOLUTION_4}\n# note\n{line}\n{PUZZLE_4},\n")
    with pytest.raises(PuzzleFileError) as error:
        read_puzzles(path)
    assert str(error.value).startswith(f"{path}:4: ") and problem in str(error.value)
    records, skipped = read_puzzles(path, on_error="skip")
    assert [r.source for r in records] == [f"{path}:2", f"{path}:5"]
    assert skipped == [str(error.value)]


def test_csv_row_without_the_puzzle_column(tmp_path):
    """A row too short to reach the header's puzzle column is a bad line, named by file and line."""
    rows = [f"1,{SOLUTION_4},{PUZZLE_4}", f"2,{SOLUTION_4}", f"3,{SOLUTION_4},{PUZZLE_4}"]
    path = _write(tmp_path, "id,solution,puzzle\n" + "\n".join(rows) + "\n")
    with pytest.raises(PuzzleFileError) as error:
        read_puzzles(path)
    assert str(error.value) == f"{path}:3: row has 2 fields, the puzzle is in field 3"
    records, skipped = read_puzzles(path, on_error="skip")
    assert [r.source for r in records] == [f"{path}:2", f"{path}:4"] and skipped == [str(error.value)]


def test_bad_plain_text_line(tmp_path):
    path = _write(tmp_path, f"{PUZZLE_4}\n{'0' * 80}\n", "p.txt")
    with pytest.raises(PuzzleFileError, match=r"p\.txt:2: puzzle has 80 characters, expected 16 or 81"):
        read_puzzles(path)


def test_file_level_errors(tmp_path):
    with pytest.raises(PuzzleFileError, match="missing.csv: file not found"):
        read_puzzles(tmp_path / "missing.csv")
    with pytest.raises(PuzzleFileError, match="no puzzles"):
        read_puzzles(_write(tmp_path, "# only a comment\n\n", "empty.txt"))
    with pytest.raises(PuzzleFileError, match=r"no puzzles in file \(only its header, line 1\)"):  # not "0 skipped"
        read_puzzles(_write(tmp_path, "puzzle,solution\n", "header_only.csv"))
    with pytest.raises(PuzzleFileError, match="no valid puzzles .1 lines skipped"):
        read_puzzles(_write(tmp_path, "12\n", "all_bad.txt"), on_error="skip")
    with pytest.raises(PuzzleFileError, match=r"nocol.csv:1: header .* has no puzzle column"):
        read_puzzles(_write(tmp_path, f"id,grid\n1,{PUZZLE_4}\n", "nocol.csv"))
    with pytest.raises(ValueError, match="on_error"):
        read_puzzles(_write(tmp_path, f"{PUZZLE_4}\n", "ok.txt"), on_error="ignore")


def test_unreadable_files_are_named(tmp_path):
    """A directory, bytes that are not UTF-8 (the line named) and an unreadable file end in PuzzleFileError, the
    message `dgft eval` prints, instead of a traceback."""
    with pytest.raises(PuzzleFileError, match=rf"{tmp_path.name}: cannot read it"):
        read_puzzles(tmp_path)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(f"{PUZZLE_4}\n# r\xe9sum\xe9\n".encode("latin-1"))
    with pytest.raises(PuzzleFileError, match=r"latin1\.txt:2: not UTF-8 text \(byte 0xe9\)"):
        read_puzzles(latin)


def test_one_column_csv_and_byte_order_mark(tmp_path):
    """A CSV of one `puzzle` column has a header and no comma; a spreadsheet's UTF-8 byte-order mark is dropped."""
    one = tmp_path / "one.csv"
    one.write_bytes(f"\ufeffpuzzle\n{PUZZLE_4}\n{PUZZLE_9}\n".encode("utf-8"))
    records, skipped = read_puzzles(one)
    assert skipped == [] and [to_string(r.puzzle) for r in records] == [PUZZLE_4, PUZZLE_9]
    assert records[0].source.endswith("one.csv:2") and is_solution(records[1].solution, records[1].puzzle)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(f"\ufeffpuzzle,solution\n{PUZZLE_4},{SOLUTION_4}\n".encode("utf-8"))
    assert to_string(read_puzzles(bom)[0][0].solution) == SOLUTION_4


@needs_benchmarks
@pytest.mark.parametrize(
    "name, count, size",
    [("norvig_easy50.csv", 50, 81), ("norvig_top95.csv", 95, 81), ("d1_4x4_test_sudoku.csv", 500, 16)],
)
def test_benchmark_files_parse(name, count, size):
    records, skipped = read_puzzles(BENCHMARKS / name)
    assert len(records) == count and skipped == []
    assert all(r.puzzle.size == size and is_solution(r.solution, r.puzzle) for r in records)


@needs_benchmarks
def test_raw_top95_matches_csv():
    raw, _ = read_puzzles(BENCHMARKS / "raw" / "norvig_top95.txt")
    listed, _ = read_puzzles(BENCHMARKS / "norvig_top95.csv")
    assert [to_string(r.puzzle) for r in raw] == [to_string(r.puzzle) for r in listed]
    assert [to_string(r.solution) for r in raw] == [to_string(r.solution) for r in listed]  # unique


# --- column choice, header detection, csv errors and line numbers --------------------------------------------
@pytest.mark.parametrize("header, row", [
    ("puzzle_id,puzzle,solution", f"7,{PUZZLE_4},{SOLUTION_4}"),  # 'puzzle' itself, not the id containing it
    ("puzzle,solutions_count,solution", f"{PUZZLE_4},1,{SOLUTION_4}"),
    ("quiz_no,Quizzes,Solutions,solution_source", f"3,{PUZZLE_4},{SOLUTION_4},d1"),
    ("id,puzzle_text,solution_grid", f"1,{PUZZLE_4},{SOLUTION_4}"),  # no exact name: the one containing it
])
def test_csv_prefers_exact_column_names(tmp_path, header, row):
    path = _write(tmp_path, f"{header}\n{row}\n")
    (record,), skipped = read_puzzles(path, check_solvable=False)
    assert skipped == [] and record.source == f"{path}:2"
    assert to_string(record.puzzle) == PUZZLE_4 and to_string(record.solution) == SOLUTION_4


@pytest.mark.parametrize("header, what", [("puzzle_id,puzzle_text", "puzzle"), ("puzzle,puzzles", "puzzle"),
                                          ("puzzle,solution_a,solution_b", "solution")])
def test_ambiguous_csv_columns_name_the_header_line(tmp_path, header, what):
    path = _write(tmp_path, f"# from somewhere\n{header}\n{PUZZLE_4},{SOLUTION_4},{SOLUTION_4}\n")
    for on_error in ("raise", "skip"):
        with pytest.raises(PuzzleFileError, match=rf"puzzles\.csv:2: header .* 2 columns that could be the {what}"):
            read_puzzles(path, on_error=on_error)


def test_headerless_csv_with_a_word_in_its_first_record(tmp_path):
    """A field like `easy` does not make line 1 a header when the line also holds a grid."""
    path = _write(tmp_path, f"{PUZZLE_4},{SOLUTION_4},easy\n{PUZZLE_9},{SOLUTION_9},hard\n")
    records, skipped = read_puzzles(path, on_error="skip")
    assert skipped == [] and [r.source for r in records] == [f"{path}:1", f"{path}:2"]
    assert [to_string(r.solution) for r in records] == [SOLUTION_4, SOLUTION_9]


def test_a_line_the_csv_module_refuses_is_a_bad_line(tmp_path):
    long = "1" * 200_000  # over the csv module's field limit
    path = _write(tmp_path, f"puzzle,solution\n{PUZZLE_4},{SOLUTION_4}\n{long},{SOLUTION_4}\n{PUZZLE_4},\n")
    with pytest.raises(PuzzleFileError, match=r"puzzles\.csv:3: not a CSV row: field larger than field limit"):
        read_puzzles(path)
    records, skipped = read_puzzles(path, on_error="skip")
    assert [r.source for r in records] == [f"{path}:2", f"{path}:4"] and len(skipped) == 1
    first = _write(tmp_path, f"{long},{SOLUTION_4}\n{PUZZLE_4},{SOLUTION_4}\n", "first.csv")  # no header to find
    records, skipped = read_puzzles(first, on_error="skip")
    assert [r.source for r in records] == [f"{first}:2"] and skipped[0].startswith(f"{first}:1: not a CSV row")


def test_line_numbers_count_newlines_as_an_editor_does(tmp_path):
    """Form feeds, \\x1c-\\x1e, \\x85 and \\u2028 inside a line do not end it; CRLF and a byte-order mark still work."""
    path = tmp_path / "odd.txt"
    path.write_bytes(f"\ufeff# a\x0cb\x1cc\x85d\u2028e\r\n{PUZZLE_4}\r\n\r\n{'0' * 15}\r\n".encode())
    with pytest.raises(PuzzleFileError, match=r"odd\.txt:4: puzzle has 15 characters"):
        read_puzzles(path)
    records, skipped = read_puzzles(path, on_error="skip")
    assert [r.source for r in records] == [f"{path}:2"] and len(skipped) == 1


def test_classic_mac_line_ends(tmp_path):
    """A file whose lines end in '\\r' alone is read line by line, not as one long line."""
    path = tmp_path / "mac.txt"
    path.write_bytes(f"{PUZZLE_4}\r{PUZZLE_4}\r".encode())
    records, skipped = read_puzzles(path)
    assert [r.source for r in records] == [f"{path}:1", f"{path}:2"] and not skipped


@pytest.mark.parametrize("sep", ["\t", ";"])
def test_tab_and_semicolon_separated_files(tmp_path, sep):
    """A file whose first line has no comma but a tab (or a semicolon) is read with that separator, header or not;
    a bad row still names its line."""
    path = _write(tmp_path, f"id{sep}puzzle{sep}solution\na{sep}{PUZZLE_4}{sep}{SOLUTION_4}\n", "puzzles.tsv")
    (record,), _ = read_puzzles(path)
    assert to_string(record.puzzle) == PUZZLE_4 and to_string(record.solution) == SOLUTION_4
    assert record.source == f"{path}:2"
    path = _write(tmp_path, f"{PUZZLE_9}{sep}{SOLUTION_9}\n{PUZZLE_4}{sep}3142243142131325\n", "bare.tsv")
    with pytest.raises(PuzzleFileError, match=r"bare\.tsv:2: "):
        read_puzzles(path)
    records, skipped = read_puzzles(path, on_error="skip")
    assert [to_string(r.solution) for r in records] == [SOLUTION_9] and len(skipped) == 1


@pytest.mark.parametrize("header", ["puzzle-string,solution-string", "sudoku.puzzle,sudoku.solution",
                                    "Puzzle (16),Solution (16)", '"puzzle", "solution"'])
def test_headers_with_punctuation_are_headers(tmp_path, header):
    """A header is a line of names that starts with a letter, whatever punctuation the names carry; it was read as
    a bad first puzzle ("puzzle has 13 cells"), or counted among the skipped lines."""
    path = _write(tmp_path, f'{header}\n"{PUZZLE_4}", "{SOLUTION_4}"\n')
    (record,), skipped = read_puzzles(path, on_error="skip")
    assert skipped == [] and record.source == f"{path}:2"
    assert to_string(record.solution) == SOLUTION_4


def test_a_header_in_another_order_picks_its_columns(tmp_path):
    path = _write(tmp_path, f"solution-string,puzzle-string\n{SOLUTION_4},{PUZZLE_4}\n")
    (record,), _ = read_puzzles(path)
    assert to_string(record.puzzle) == PUZZLE_4 and to_string(record.solution) == SOLUTION_4


def test_the_separator_is_the_one_that_splits_out_a_grid(tmp_path):
    """A semicolon file with a decimal comma in a column was split on its commas: every line a bad puzzle."""
    path = _write(tmp_path, f"{PUZZLE_4};{SOLUTION_4};1,5\n{PUZZLE_4};{SOLUTION_4};2,5\n")
    records, _ = read_puzzles(path)
    assert [to_string(r.solution) for r in records] == [SOLUTION_4] * 2
    with_header = _write(tmp_path, f"puzzle;solution;rating,x\n{PUZZLE_4};{SOLUTION_4};1,5\n", "h.csv")
    (record,), _ = read_puzzles(with_header)
    assert to_string(record.solution) == SOLUTION_4


def test_a_word_beside_each_grid_is_not_a_solution(tmp_path):
    """`<grid>\\t<name>` lines: the name was read as the solution ("solution has 7 cells")."""
    path = _write(tmp_path, f"{PUZZLE_4}\tpuzzle0\n{PUZZLE_4}\tpuzzle1\n", "named.txt")
    records, _ = read_puzzles(path)
    assert [to_string(r.solution) for r in records] == [SOLUTION_4] * 2  # solved, as a plain file's puzzles are
    bad = _write(tmp_path, f"{PUZZLE_4},{SOLUTION_4[:-1]}\n", "cut.csv")  # a cut solution is still an error
    with pytest.raises(PuzzleFileError, match=r"cut\.csv:1: solution has 15 characters"):
        read_puzzles(bad)


def test_rows_of_empty_fields_are_blank_lines(tmp_path):
    path = _write(tmp_path, f",,\npuzzle,solution\n{PUZZLE_4},{SOLUTION_4}\n,\n , \n")
    records, skipped = read_puzzles(path)
    assert len(records) == 1 and skipped == [] and records[0].source == f"{path}:3"
    rated = _write(tmp_path, f"{PUZZLE_4},3\n{PUZZLE_4},12\n", "rated.csv")  # a rating beside each grid
    assert [to_string(r.solution) for r in read_puzzles(rated)[0]] == [SOLUTION_4] * 2


def test_limit_stops_reading(tmp_path):
    """`limit`: the lines after the first N records are not read, so a bad one there is neither an error nor
    counted as skipped (eval's `limit=N` read, checked and solved the whole file, and counted its bad lines)."""
    path = _write(tmp_path, f"{PUZZLE_4}\n{PUZZLE_4[:-1]}\n{PUZZLE_4}\n", "p.txt")
    records, skipped = read_puzzles(path, limit=1)
    assert len(records) == 1 and skipped == []
    records, skipped = read_puzzles(path, on_error="skip", limit=2)
    assert [r.source for r in records] == [f"{path}:1", f"{path}:3"] and len(skipped) == 1


def test_white_space_inside_a_grid_is_named(tmp_path):
    path = _write(tmp_path, f"{PUZZLE_4[:8]} {PUZZLE_4[8:]}\n", "s.txt")
    with pytest.raises(PuzzleFileError, match=r"s\.txt:1: puzzle has 17 characters, 1 of them white space inside"):
        read_puzzles(path)


def test_a_puzzle_column_named_for_solutions_is_not_also_the_solution(tmp_path):
    path = _write(tmp_path, f"id,puzzle_for_solution\n1,{PUZZLE_4}\n")
    (record,), _ = read_puzzles(path)
    assert to_string(record.puzzle) == PUZZLE_4 and to_string(record.solution) == SOLUTION_4


def test_a_bad_first_row_does_not_hide_the_solution_column(tmp_path):
    """A bad first record (here a cut puzzle, no word beside it) leaves the second field the solution column: the
    rows after it have their solutions read and checked, not silently solved."""
    path = _write(tmp_path, f"{PUZZLE_4[:-1]},{SOLUTION_4}\n{PUZZLE_4},{SOLUTION_4[:-1]}\n{PUZZLE_4},{SOLUTION_4}\n")
    records, skipped = read_puzzles(path, on_error="skip")
    assert len(records) == 1 and "puzzle has 15" in skipped[0] and "solution has 15" in skipped[1]


def test_a_record_whose_id_starts_with_a_hash_is_read_not_dropped(tmp_path):
    """A CSV line starting with '#' is a comment only when its puzzle field is not a grid: ids like `#2` are records,
    a commented-out headerless row (`#<puzzle>,<solution>`) and a remark are comments."""
    text = (f"# exported 2026\nid,puzzle,solution\n1,{PUZZLE_4},{SOLUTION_4}\n#2,{PUZZLE_9},{SOLUTION_9}\n"
            f"# a remark, with a comma\n#3,{PUZZLE_4[:-1]},{SOLUTION_4}\n")
    path = _write(tmp_path, text)
    records, skipped = read_puzzles(path, on_error="skip")
    assert [r.source for r in records] == [f"{path}:3", f"{path}:4"]
    assert to_string(records[1].solution) == SOLUTION_9
    assert skipped == [f"{path}:6: puzzle has 15 characters, expected 16 or 81 (one a cell)"]
    path = _write(tmp_path, f"#{PUZZLE_4},{SOLUTION_4}\n{PUZZLE_9},{SOLUTION_9}\n", "headerless.csv")
    records, skipped = read_puzzles(path)
    assert [r.source for r in records] == [f"{path}:2"] and skipped == []


def test_a_bad_first_record_with_a_word_is_not_a_header(tmp_path):
    """A grid a cell short beside a word is line 1's bad record (named as such, or skipped), not a header."""
    path = _write(tmp_path, f"{PUZZLE_9[:-1]},easy\n{PUZZLE_9},easy\n")
    with pytest.raises(PuzzleFileError, match=r"puzzles\.csv:1: puzzle has 80 characters"):
        read_puzzles(path)
    records, skipped = read_puzzles(path, on_error="skip")
    assert [r.source for r in records] == [f"{path}:2"] and len(skipped) == 1


def test_a_numbered_header_does_not_hide_the_solution_column(tmp_path):
    """pandas writes `0,1` over unnamed columns: that line is a bad record, and the solutions below it are still
    read and checked (a contradicting one is named), not replaced by the solver's."""
    wrong = SOLUTION_9[::-1]
    path = _write(tmp_path, f"0,1\n{PUZZLE_9},{SOLUTION_9}\n{PUZZLE_9},{wrong}\n")
    records, skipped = read_puzzles(path, on_error="skip")
    assert [r.source for r in records] == [f"{path}:2"]
    assert "puzzles.csv:1: puzzle has 1 characters" in skipped[0] and "puzzles.csv:3: solution" in skipped[1]


def test_an_infilling_file_given_to_a_sudoku_run_is_named_as_such(tmp_path):
    """JSON lines and gzip are infill problem files: said so, instead of a CSV header with no puzzle column."""
    import gzip

    jsonl = tmp_path / "problems.jsonl"
    jsonl.write_text('{"task_id": "t/0", "prompt": "def f():\\n", "suffix": "", "canonical_solution": "x"}\n')
    with pytest.raises(PuzzleFileError, match=r"problems\.jsonl:1: JSON, not a puzzle line.*infill runs"):
        read_puzzles(jsonl)
    jsonl.write_text("# problems\n" + jsonl.read_text())  # the line named is the JSON's, after a comment
    with pytest.raises(PuzzleFileError, match=r"problems\.jsonl:2: JSON, not a puzzle line"):
        read_puzzles(jsonl)
    packed = tmp_path / "problems.jsonl.gz"
    packed.write_bytes(gzip.compress(jsonl.read_bytes()))
    with pytest.raises(PuzzleFileError, match=r"problems\.jsonl\.gz: gzip-compressed; puzzle files are plain text"):
        read_puzzles(packed)


def test_repeated_puzzles_are_named():
    from dgft.tasks.sudoku.io import repeats

    a, b = from_string(PUZZLE_4), from_string(PUZZLE_9)
    recs = [SudokuRecord(a, None, "f:1"), SudokuRecord(b, None, "f:2"), SudokuRecord(a.copy(), None, "f:3")]
    assert repeats(recs[:2]) is None
    assert repeats(recs) == "1 puzzle repeats an earlier one (first: f:3 is f:1)"


def test_solving_a_long_file_without_solutions_shows_progress(tmp_path, capsys):
    """Each puzzle of a file without solutions is solved for its label, seconds each for hard ones: a bar on stderr
    says how far it is (not for a short file, nor for one with solutions)."""
    from dgft.tasks.sudoku.io import SOLVING_BAR_FROM

    plain = _write(tmp_path, f"{PUZZLE_4}\n" * SOLVING_BAR_FROM, "many.txt")
    records, _ = read_puzzles(plain)
    assert len(records) == SOLVING_BAR_FROM
    assert "many.txt: solving (no solution column)" in capsys.readouterr().err
    read_puzzles(_write(tmp_path, f"{PUZZLE_4}\n" * (SOLVING_BAR_FROM - 1), "few.txt"))
    read_puzzles(_write(tmp_path, "puzzle,solution\n" + f"{PUZZLE_4},{SOLUTION_4}\n" * SOLVING_BAR_FROM))
    assert "solving" not in capsys.readouterr().err


def test_a_hash_id_record_with_a_typo_in_its_grid_is_named_not_dropped(tmp_path):
    """`#1,<grid with an x>,<solution>` under an id,puzzle,solution header was taken for a comment (its puzzle field
    did not match the grid pattern) and dropped without a count, even with on_error=raise. A field of mostly digits
    is a record, to be named; a remark stays a comment."""
    typo = PUZZLE_9[:5] + "x" + PUZZLE_9[6:]
    spaced = " ".join(PUZZLE_9[i:i + 9] for i in range(0, 81, 9))
    text = (f"id,puzzle,solution\n#0,{PUZZLE_9},{SOLUTION_9}\n#1,{typo},{SOLUTION_9}\n#2,{spaced},{SOLUTION_9}\n"
            "# 2026-01-01, made by hand, checked\n")
    path = _write(tmp_path, text)
    with pytest.raises(PuzzleFileError, match=r"puzzles\.csv:3: puzzle has bad character 'x'"):
        read_puzzles(path)
    records, skipped = read_puzzles(path, on_error="skip")
    assert [r.source for r in records] == [f"{path}:2"] and len(skipped) == 2
    assert skipped[1].startswith(f"{path}:4: puzzle has 89 characters")


def test_hash_id_records_without_a_header_are_named(tmp_path):
    """Every line `#n,<grid>,<solution>` and no header: all comments, so "no puzzles in file" hid 2 records; now the
    first is named, with the header that makes them records."""
    path = _write(tmp_path, f"#0,{PUZZLE_9},{SOLUTION_9}\n#1,{PUZZLE_4},{SOLUTION_4}\n")
    with pytest.raises(PuzzleFileError, match=r"puzzles\.csv:1: every line starts with '#'.*needs a header line"):
        read_puzzles(path)
    with pytest.raises(PuzzleFileError, match=r"puzzles\.txt: no puzzles in file"):
        read_puzzles(_write(tmp_path, "# only a remark, 2026\n# 12, 34\n", "puzzles.txt"))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_a_utf16_file_is_named_as_such(tmp_path, encoding):
    """Saved as UTF-16 (with or without its byte-order mark), a file was "not UTF-8 (byte 0xff)" or a header
    "['i\\x00d\\x00', ...] has no puzzle column"."""
    path = tmp_path / "puzzles.csv"
    path.write_bytes(f"id,puzzle,solution\n0,{PUZZLE_9},{SOLUTION_9}\n".encode(encoding))
    with pytest.raises(PuzzleFileError, match=r"puzzles\.csv: UTF-16 text .* save it as UTF-8"):
        read_puzzles(path)


def test_comments_with_dates_and_numbers_stay_comments_and_dash_blanks_are_records(tmp_path):
    """The rule that keeps '#'-id records must not take a remark holding a date or a time for one (the puzzle column
    is not the first here, so the remark's second field is where the puzzle would be)."""
    dashed = PUZZLE_9.replace("0", "-")
    text = ("id,puzzle,solution\n# d1 test subset, 2026-01-01, first 2\n# created, 2026-01-01 12:00\n"
            f"1,{PUZZLE_4},{SOLUTION_4}\n#2,{dashed[:40]}x{dashed[41:]},{SOLUTION_9}\n")
    records, skipped = read_puzzles(_write(tmp_path, text), on_error="skip")
    assert [r.source.rsplit(":", 1)[1] for r in records] == ["4"]
    assert len(skipped) == 1 and ":5: puzzle has bad character '-'" in skipped[0]


@pytest.mark.parametrize("text", [f"#{PUZZLE_9},{SOLUTION_9}\n#{PUZZLE_4},{SOLUTION_4}\n",
                                  "# made, 2026-01-01\n", "\0" * 64])
def test_rows_all_commented_out_a_remark_or_zeros_are_no_puzzles_not_a_header_or_utf16(tmp_path, text):
    path = tmp_path / "puzzles.csv"
    path.write_bytes(text.encode())
    with pytest.raises(PuzzleFileError) as err:
        read_puzzles(path)
    assert "header line" not in str(err.value) and "UTF-16" not in str(err.value), err.value


def test_a_solution_of_the_other_size_is_named_as_such():
    """A 9x9 puzzle beside a 16-character solution was "solution has bad character '8' ... (expected 0-4 or '.')"."""
    from dgft.tasks.sudoku.io import check_record

    with pytest.raises(ValueError, match="puzzle is 9x9 but solution is 4x4"):
        check_record(PUZZLE_9, SOLUTION_9[:16], True)  # digits above 4: read as a 4x4 grid's, a bad character
    with pytest.raises(ValueError, match="puzzle is 4x4 but solution is 9x9"):
        check_record(PUZZLE_4, SOLUTION_9, True)


@pytest.mark.parametrize("sep", [";", ",", "\t"])
def test_excels_separator_line_is_read_as_such(tmp_path, sep):
    """Excel writes `sep=;` as a CSV's first line to name its separator: it was read as a header without a puzzle
    column."""
    path = _write(tmp_path, f"sep={sep}\npuzzle{sep}solution\n{PUZZLE_9}{sep}{SOLUTION_9}\n")
    records, skipped = read_puzzles(path)
    assert [r.source for r in records] == [f"{path}:3"] and skipped == []
    assert to_string(records[0].solution) == SOLUTION_9

