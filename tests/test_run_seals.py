"""What a run directory holds is checked before it is used: the held-out split as training wrote it, an evaluation
killed while replacing another leaves no result that names files it did not write, a folder where the run keeps a
file (or a file where it keeps a folder) is named before a resume, torn checkpoints are pruned, and a weight file
is hashed once per process only when it has settled."""

import json
import os
import time

import pytest
import torch

from dgft import checkpoint as ckpt
from dgft.cli import main
from test_faults import _tiny_model_cfg

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=16", "model.intermediate_size=64", "model.moe_intermediate_size=32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny trained run (4 steps, a checkpoint at step 2), copied by each test that changes it."""
    root = tmp_path_factory.mktemp("seals")
    run = root / "run"
    main(["train", f"hydra.run.dir={run}", f"task.cache_dir={root / 'cache'}", "task.base_puzzles=20",
          "task.heldout_puzzles=3", "task.sizes=[4]", "task.size_weights=[1.0]", "trainer.max_steps=4",
          "trainer.batch_size=8", "trainer.eval_every=0", "trainer.ckpt_every=2", "trainer.log_every=1",
          "sampler.steps=4", *TINY])
    return run


def _copy(trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def test_a_held_out_split_cut_short_is_refused_and_named(trained, tmp_path, capsys):
    """RUN/data/heldout.csv is sealed in train_summary.json; a copy of it cut short (a full disk) was scored as the
    whole split. `data=` the file as it is still evaluates it, under another name."""
    run = _copy(trained, tmp_path)
    summary = json.loads((run / "train_summary.json").read_text())
    assert set(summary["heldout"]) == {"heldout.csv"}
    split = run / "data" / "heldout.csv"
    lines = split.read_text().splitlines(keepends=True)
    split.write_text("".join(lines[:-1]))
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "baseline=false", "sampler.modes=[rules]"])
    said = capsys.readouterr().err
    assert err.value.code == 2 and "heldout.csv has" in said and f"data={split}" in said, said
    assert not (run / "eval").exists()
    main(["eval", str(run), f"data={split}", "name=cut", "baseline=false", "sampler.modes=[rules]"])
    assert json.loads((run / "eval" / "cut.json").read_text())["modes"]["rules"]["n"] == len(lines) - 2  # header


def test_an_evaluation_killed_while_replacing_another_leaves_no_result_naming_its_files(trained, tmp_path,
                                                                                          monkeypatch):
    """overwrite=true, killed after the new samples were written: the old .json (and .md) named the new samples as
    its own. Now they go first: what is left is new files without a .json, an unfinished evaluation."""
    import dgft.tasks.sudoku.evaluate as sudoku_eval

    run = _copy(trained, tmp_path)
    main(["eval", str(run), "baseline=false", "sampler.modes=[rules]"])
    assert (run / "eval" / "heldout.json").exists() and (run / "eval" / "heldout.md").exists()

    def killed(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(sudoku_eval, "markdown", killed)  # after the samples, before the .md and the .json
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "baseline=false", "sampler.modes=[rules]", "overwrite=true", "seed=5"])
    assert err.value.code == 130
    assert not (run / "eval" / "heldout.json").exists() and not (run / "eval" / "heldout.md").exists()
    assert (run / "eval" / "heldout_samples.jsonl").exists()


@pytest.mark.parametrize("name,make", [("metrics.jsonl", "folder"), ("checkpoints", "file")])
def test_a_resume_names_a_path_of_the_wrong_kind(trained, tmp_path, capsys, name, make):
    """`metrics.jsonl/` a folder (or `checkpoints` a file): a traceback on resume before; now a refusal naming it,
    with nothing trained or changed."""
    import shutil

    run = _copy(trained, tmp_path)
    path = run / name
    keep = tmp_path / "kept"
    shutil.move(path, keep)
    path.mkdir() if make == "folder" else path.write_text("")
    with pytest.raises(SystemExit) as err:
        main(["train", f"resume={run}", "trainer.max_steps=6"])
    said = capsys.readouterr().err
    assert err.value.code == 2 and f"{path}: a {make} where the run keeps its {name}" in said, said
    assert "Traceback" not in said


def test_torn_checkpoints_before_the_kept_ones_are_pruned(tmp_path):
    """A torn checkpoint a resume skipped (said) was never pruned: it stayed on disk for the life of the run. It goes
    once the checkpoints kept are all newer; a torn one newer than those kept is left (a resume would name it)."""
    from dgft.model import build_tiny

    model = build_tiny(_tiny_model_cfg(), 812)
    torn_old, torn_new = (tmp_path / "checkpoints" / f"step-{n:06d}" for n in (1, 9))
    for torn in (torn_old, torn_new):
        torn.mkdir(parents=True)
        (torn / "model.safetensors").write_bytes(b"cut")
    with pytest.warns(UserWarning, match="step-000001: .*removed, as checkpoints before the kept step-000002 are"):
        for step in (2, 3):
            ckpt.save(tmp_path, step, model, {"x": torch.zeros(1)}, {"step": step}, keep_last=1)
    assert [c.name for c in ckpt.checkpoints(tmp_path)] == ["step-000003", "step-000009"]


def test_a_settled_file_is_hashed_once_a_fresh_one_each_time(tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 100)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k))
    assert ckpt.sha256(path) == ckpt.sha256(path) == hashlib.sha256(b"a" * 100).hexdigest()
    assert len(reads) == 2  # written just now: its times could miss a change in the same tick
    path.write_bytes(b"b" * 100)  # same size, same tick maybe: read again all the same
    assert ckpt.sha256(path) == hashlib.sha256(b"b" * 100).hexdigest()
    monkeypatch.setattr(ckpt, "SETTLED_NS", 0)
    reads.clear()
    assert ckpt.sha256(path) == ckpt.sha256(path) and len(reads) == 1
    time.sleep(0.01)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))  # a change of its times: read again
    ckpt.sha256(path)
    assert len(reads) == 2
