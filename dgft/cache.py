"""Cache directories, and result files, that appear whole or not at all, even with several processes building the
same one.

A cache (generated puzzles, an infill corpus split, a trained tokenizer) is written into a directory of this
process's own, then renamed into place. Two runs started at once with the same seed and settings build the
same content, so whichever renames first wins and the other's copy is removed: no half-written directory is
ever read, and none is left behind.

Example: `publish(path, lambda tmp: save_splits(splits, tmp))`, then `load_splits(path)`, which also checks each
split's number of rows against the count written beside it: a cache file cut short where datasets' record batches
end still loads, with rows missing and no error. A single file is replaced the same way: `replace_file(path,
text)` or `replace_file(path, lambda tmp: fig.savefig(tmp))`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dgft.config import ConfigError

ABANDONED_S = 24 * 3600  # a build's copy untouched this long was left by a killed process


class CacheError(ConfigError):
    """The cache directory cannot be written (a file, no permission, disk full); the message names it."""


def ensure_dir(directory: Path) -> Path:
    """The cache directory, made if need be and writable, or a CacheError naming it (before minutes of generating
    data that could not be saved)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unusable(directory, "cannot make the data cache there", err) from err
    if not os.access(directory, os.W_OK | os.X_OK):
        raise _unusable(directory, "the data cache is not writable")
    return directory


def _unusable(directory: Path, problem: str, err: OSError | None = None) -> CacheError:
    why = f" ({type(err).__name__}: {err.strerror or err})" if err else ""
    return CacheError(f"{directory}: {problem}{why}; set task.cache_dir to a writable directory")


def discard(path: Path, seen: int | None = None) -> bool:
    """Take a damaged cache entry (a folder, or a file where one belongs) out of the way, so it can be built again:
    moved aside under a name of this process's, then removed. -> False when the entry there is no longer the one
    this process found damaged (inode `seen`): another process rebuilt it meanwhile, and it is left in place. Gone
    meanwhile is fine. A CacheError naming it when it cannot be moved (another user's, in a shared cache), before
    minutes of making data that could not be put there."""
    aside = path.with_name(f"{path.name}.discard{os.getpid()}")
    _remove(aside)  # left by a killed process that had this pid
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another process took it out of the way
    except OSError as err:
        raise CacheError(f"{path}: a damaged cache entry that cannot be removed ({type(err).__name__}: "
                         f"{err.strerror or err}); remove it, or set task.cache_dir to another directory") from err
    if seen is not None and aside.lstat().st_ino != seen:  # rebuilt by another process: put back, not ours
        with contextlib.suppress(OSError):
            os.rename(aside, path)
        _remove(aside)  # only if a third copy took its place meanwhile
        return False
    _remove(aside)
    return True


def cached(path: Path, load: Callable[[], Any], log, redo: str = "building"):
    """The cache entry at `path` as `load()` reads it, or None when there is none or it is damaged: then it is taken
    out of the way (`discard`, or a CacheError naming it) and said, to be made again. An entry another process built
    again meanwhile is read."""
    seen = entry_id(path)  # the entry found damaged, not one another process builds meanwhile
    if seen is None:
        return None
    try:
        return load()
    except Exception as err:  # a torn, cut short or corrupted cache is made again, not trusted
        if not discard(path, seen):  # rebuilt meanwhile by another process: theirs, read
            return load()
        log(f"{path}: unreadable cache ({type(err).__name__}: {err}); {redo} it again")
        return None


def entry_id(path: Path) -> int | None:
    """The inode of the cache entry at `path` (what `discard` compares), or None when there is none (or the cache
    folder is not one: `ensure_dir` names that)."""
    try:
        return path.lstat().st_ino
    except OSError:
        return None


def _remove(path: Path) -> None:
    """Remove a folder or file if there, errors ignored (the name it held is free either way)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def publish(path: Path, write: Callable[[Path], None]) -> None:
    """Build the directory `path` by `write(tmp)` into a fresh per-process directory, then rename it into place.

    If `path` exists by then (built meanwhile by another process), this process's copy is discarded. A copy a killed
    process left (`<name>.tmp<pid>`, untouched for ABANDONED_S) is removed: no build takes that long, and another
    machine's process may be building one in a shared cache (its pid says nothing here).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process that had this pid
    for left in path.parent.glob(f"{path.name}.tmp*") if path.parent.is_dir() else ():
        try:
            if left.name.removeprefix(f"{path.name}.tmp").isdigit() and \
                    time.time() - left.stat().st_mtime > ABANDONED_S and not left.is_symlink():
                shutil.rmtree(left, ignore_errors=True)
        except OSError:
            continue  # removed meanwhile
    try:
        ensure_dir(path.parent)
        try:
            write(tmp)
        except OSError as err:
            raise _unusable(path.parent, "cannot write the data cache there", err) from err
        try:
            os.replace(tmp, path)  # a directory onto a non-empty one fails: the other process won
        except OSError:
            if not path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


ROWS = "rows.json"  # beside a cached DatasetDict: each split's number of rows as written


def save_splits(splits, directory: Path, **kwargs) -> None:
    """`splits.save_to_disk(directory, **kwargs)`, and in directory/rows.json each split's number of rows and the
    sha256 of every file written."""
    from dgft.checkpoint import file_records

    splits.save_to_disk(str(directory), **kwargs)
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    (Path(directory) / ROWS).write_text(json.dumps({"rows": {k: len(v) for k, v in splits.items()},
                                                     "files": file_records(Path(directory), files)}))


def load_splits(path: Path):
    """The DatasetDict `save_splits` wrote; ValueError if a file differs from the record written with it (size, then
    sha256: an edit of the same length too) or a split's rows differ from its count (a damaged cache, to be built
    again), or the record is missing. A record from before dgft kept the files' hashes (rows alone) is checked by
    its rows, as it was then."""
    from datasets import load_from_disk

    from dgft.checkpoint import mismatch

    written = json.loads((Path(path) / ROWS).read_text())
    if not isinstance(written, dict):
        raise ValueError(f"{path / ROWS}: not a record of the cache")
    if "files" in written:
        changed = mismatch(Path(path), written["files"])
        if changed:
            raise ValueError(f"{path}: {changed}")
    else:  # a cache from before dgft recorded its files (before session 35): its rows alone, as then
        written = {"rows": written}
    splits = load_from_disk(str(path))
    rows = {k: len(v) for k, v in splits.items()}
    if rows != written["rows"]:
        raise ValueError(f"{path}: rows {rows}, written {written['rows']}")
    return splits


def replace_file(path: Path, content: str | Callable[[Path], None]) -> None:
    """Write the file `path` whole or not at all: `content` (text, or a function writing the file it is given) goes
    into a temporary beside it (`written_beside`), which is then renamed over `path`; the temporary never stays."""
    tmp = written_beside(path, content)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def written_beside(path: Path, content: str | Callable[[Path], None]) -> Path:
    """`content` (text, or a function writing the file it is given) written whole into a temporary beside `path`,
    with the same suffix for writers that go by it -> the temporary, for the caller to rename into place; removed
    when the writing fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            content(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
