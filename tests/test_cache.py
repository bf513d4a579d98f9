"""Cache directories are published whole: by rename from a per-process directory, never left half-written."""

import pytest

from dgft.cache import publish


def _leftovers(root):
    return sorted(p.name for p in root.iterdir() if ".tmp" in p.name)


def test_publish_renames_into_place(tmp_path):
    path = tmp_path / "cache"
    publish(path, lambda tmp: (tmp.mkdir(), (tmp / "a.txt").write_text("mine")))
    assert (path / "a.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == []


def test_another_process_finishing_first_wins_and_nothing_is_left(tmp_path):
    path = tmp_path / "cache"

    def write(tmp):  # while this process writes, another one publishes the same cache
        tmp.mkdir()
        (tmp / "a.txt").write_text("mine")
        path.mkdir()
        (path / "a.txt").write_text("theirs")

    publish(path, write)
    assert (path / "a.txt").read_text() == "theirs"
    assert _leftovers(tmp_path) == []


def test_a_failed_write_publishes_nothing(tmp_path):
    path = tmp_path / "cache"

    def write(tmp):
        tmp.mkdir()
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish(path, write)
    assert not path.exists()
    assert _leftovers(tmp_path) == []


def test_sudoku_cache_without_its_index_is_generated_again(tmp_path):
    from omegaconf import OmegaConf

    from dgft.config import TaskConfig
    from dgft.data import build_splits, cache_key

    cfg = OmegaConf.structured(TaskConfig(base_puzzles=10, heldout_puzzles=4, cache_dir=str(tmp_path)))
    first = list(build_splits(cfg, seed=1, workers=1, log=lambda *_: None)["train"]["puzzle"])
    path = tmp_path / f"sudoku-{cache_key(cfg, 1)}"
    (path / "dataset_dict.json").unlink()  # torn: an interrupted copy, say
    messages = []
    again = build_splits(cfg, seed=1, workers=1, log=messages.append)
    assert any("unreadable cache" in m for m in messages)
    assert list(again["train"]["puzzle"]) == first
    assert _leftovers(tmp_path) == []


def test_a_file_in_place_of_a_cache_entry_is_replaced_and_one_that_cannot_be_removed_is_named(tmp_path, monkeypatch):
    """A file where the cache entry belongs: `rmtree(ignore_errors=True)` left it, the new data's rename failed without
    a word, and reading them back was a bare NotADirectoryError after the data were made. It is removed now; an
    entry that cannot be removed (another user's, in a shared cache) is a CacheError naming it, before generating."""
    import os
    from pathlib import Path

    from omegaconf import OmegaConf

    from dgft.cache import CacheError
    from dgft.config import TaskConfig
    from dgft.data import build_splits, cache_key

    cfg = OmegaConf.structured(TaskConfig(base_puzzles=10, heldout_puzzles=4, cache_dir=str(tmp_path)))
    path = tmp_path / f"sudoku-{cache_key(cfg, 1)}"
    path.write_text("junk")
    assert len(build_splits(cfg, seed=1, workers=1, log=lambda *_: None)["train"]) > 0 and path.is_dir()
    (path / "rows.json").write_text("torn")

    rename = os.rename

    def refused(src, dst):  # a sticky shared folder: another user's entry cannot be moved
        if Path(src) == path:
            raise PermissionError(13, "Permission denied")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", refused)
    said = []
    with pytest.raises(CacheError, match=rf"{path}: a damaged cache entry that cannot be removed \(PermissionError: "
                                         r"Permission denied\); remove it, or set task.cache_dir"):
        build_splits(cfg, seed=1, workers=1, log=said.append)
    assert said == []  # nothing made for nothing


def test_discarding_a_damaged_entry_leaves_one_another_process_rebuilt(tmp_path):
    """Two trainings on one damaged cache: the one that discards it second must not remove the entry the first has
    built again meanwhile (it found the damaged one, another inode), nor fail when the first took it already."""
    from dgft.cache import discard, entry_id

    entry = tmp_path / "sudoku-x"
    entry.mkdir()
    (entry / "rows.json").write_text("torn")
    seen = entry_id(entry)
    aside = tmp_path / "elsewhere"
    entry.rename(aside)  # the other process takes it out of the way ...
    entry.mkdir()  # ... and publishes its new copy
    (entry / "rows.json").write_text("new")
    assert discard(entry, seen) is False and (entry / "rows.json").read_text() == "new"
    assert discard(entry, entry_id(entry)) is True and not entry.exists()
    assert discard(entry, seen) is True  # gone meanwhile: nothing to do
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]


def test_sudoku_cache_with_rows_missing_is_generated_again(tmp_path):
    """A cache file cut short where datasets' record batches end loads without error, rows missing: the counts
    written beside the splits catch it, and the cache is generated again rather than trained on short."""
    import shutil

    from datasets import DatasetDict, load_from_disk
    from omegaconf import OmegaConf

    from dgft.config import TaskConfig
    from dgft.data import build_splits, cache_key

    cfg = OmegaConf.structured(TaskConfig(base_puzzles=10, heldout_puzzles=4, cache_dir=str(tmp_path)))
    first = list(build_splits(cfg, seed=1, workers=1, log=lambda *_: None)["train"]["puzzle"])
    path = tmp_path / f"sudoku-{cache_key(cfg, 1)}"
    full = load_from_disk(str(path))
    DatasetDict({"train": full["train"].select(range(5)), "heldout": full["heldout"]}).save_to_disk(
        str(tmp_path / "short"))
    del full
    shutil.rmtree(path / "train")
    shutil.copytree(tmp_path / "short" / "train", path / "train")
    assert len(load_from_disk(str(path))["train"]) == 5  # what datasets alone would train on
    messages = []
    again = build_splits(cfg, seed=1, workers=1, log=messages.append)
    assert any("unreadable cache" in m and "the record says" in m for m in messages)  # the file's size
    assert list(again["train"]["puzzle"]) == first


def test_a_cache_edited_in_place_is_generated_again(tmp_path):
    """A same-length edit of a cached puzzle (rows and sizes unchanged) is caught by the files' sha256 recorded beside
    them: the cache is generated again, not trained on."""
    from omegaconf import OmegaConf

    from dgft.config import TaskConfig
    from dgft.data import build_splits, cache_key

    cfg = OmegaConf.structured(TaskConfig(base_puzzles=10, heldout_puzzles=4, cache_dir=str(tmp_path)))
    first = list(build_splits(cfg, seed=1, workers=1, log=lambda *_: None)["train"]["solution"])
    arrow = next((tmp_path / f"sudoku-{cache_key(cfg, 1)}" / "train").glob("*.arrow"))
    data = arrow.read_bytes()
    at = data.index(first[0].encode())
    arrow.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])  # one digit of a solution, same length
    messages = []
    again = build_splits(cfg, seed=1, workers=1, log=messages.append)
    assert any("unreadable cache" in m and "changed since it was recorded" in m for m in messages), messages
    assert list(again["train"]["solution"]) == first


def test_replace_file_writes_whole_or_not_at_all(tmp_path):
    """A writer that fails leaves the old file as it was and no temporary; the temporary keeps the suffix."""
    from dgft.cache import replace_file

    path = tmp_path / "result.json"
    replace_file(path, "old")
    seen = []

    def broken(tmp):
        seen.append(tmp.name)
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_file(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert seen[0].startswith(".result.tmp-") and seen[0].endswith(".json")
    replace_file(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"


def test_a_cache_from_before_file_records_still_loads_by_its_rows(tmp_path):
    """rows.json of an older dgft holds each split's rows alone: the cache is checked by them, as then (an offline
    machine keeps an infill cache it cannot build again), not thrown away."""
    import json

    from datasets import Dataset, DatasetDict

    from dgft.cache import ROWS, load_splits, save_splits

    splits = DatasetDict({"train": Dataset.from_dict({"x": [1, 2, 3]}), "heldout": Dataset.from_dict({"x": [4]})})
    save_splits(splits, tmp_path / "c")
    (tmp_path / "c" / ROWS).write_text(json.dumps({"train": 3, "heldout": 1}))
    assert len(load_splits(tmp_path / "c")["train"]) == 3
    (tmp_path / "c" / ROWS).write_text(json.dumps({"train": 2, "heldout": 1}))
    with pytest.raises(ValueError, match="rows"):
        load_splits(tmp_path / "c")


def test_drawing_batches_writes_nothing_into_the_cache(tmp_path):
    """The training batches read the cached split without writing into its directory: an index file written there
    (datasets' `filter` did) is not covered by the cache's record, and datasets reused it, so an edit of it changed
    the training data without a word. The pools are the split's rows of each size, in order."""
    import numpy as np
    from omegaconf import OmegaConf

    from dgft.config import TaskConfig
    from dgft.data import TrainBatches, build_splits, cache_key
    from dgft.tasks.sudoku import grid as G

    cfg = OmegaConf.structured(TaskConfig(base_puzzles=12, heldout_puzzles=4, cache_dir=str(tmp_path)))
    split = build_splits(cfg, seed=1, workers=1, log=lambda *_: None)["train"]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    batches = TrainBatches(split, None, cfg, batch_size=4, seed=0)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / f"sudoku-{cache_key(cfg, 1)}").is_dir()
    rows = split[:]
    for n in cfg.sizes:
        of_size = [i for i, size in enumerate(rows["size"]) if size == n]
        puzzles, solutions, orders = batches.pool[n]
        assert np.array_equal(puzzles, np.stack([G.from_string(rows["puzzle"][i]) for i in of_size]))
        assert np.array_equal(solutions, np.stack([G.from_string(rows["solution"][i]) for i in of_size]))
        for j, i in enumerate(of_size):  # each solving order, padded with -1 to the grid's cells
            order = rows["order"][i]
            assert orders[j, :len(order)].tolist() == list(order) and (orders[j, len(order):] == -1).all()


def test_settings_that_leave_a_split_without_a_size_are_named_before_anything_is_cached(tmp_path):
    """4x4 puzzles with 15 givens fall in two symmetry classes, and a class belongs to one split: with seed 1 neither
    is held out. The held-out split was empty without a word (or, 4x4 alone, a datasets IndexError after minutes of
    rounds); a range no puzzle reaches was ignored without a word."""
    from omegaconf import OmegaConf

    from dgft.config import ConfigError, TaskConfig
    from dgft.data import build_splits

    cfg = OmegaConf.structured(TaskConfig(base_puzzles=10, heldout_puzzles=4, cache_dir=str(tmp_path / "c"),
                                          sizes=[4], size_weights=[1.0], blank_fraction=[0.04, 0.06]))
    with pytest.raises(ConfigError, match=r"seed=1: no 4x4 puzzle for the held-out split \(15 givens\)"):
        build_splits(cfg, seed=1, workers=1, log=lambda *_: None)
    assert not any((tmp_path / "c").iterdir())
    said = []
    cfg = OmegaConf.structured(TaskConfig(base_puzzles=10, heldout_puzzles=4, cache_dir=str(tmp_path / "c"),
                                          blank_fraction=[0.9, 0.95]))
    build_splits(cfg, seed=0, workers=1, log=said.append)
    assert any(m.startswith("note: 9x9 puzzles have") and "outside the 4-8 that task.blank_fraction asks" in m
               for m in said), said
