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
    its own. Now every file is first written beside its place: killed then, the old result stays whole; killed
    between the renames, the old .json and .md are gone first, leaving new files without a .json (unfinished)."""
    import os

    import dgft.evaluate
    import dgft.tasks.sudoku.evaluate as sudoku_eval

    run = _copy(trained, tmp_path)
    main(["eval", str(run), "baseline=false", "sampler.modes=[rules]"])
    old = {f.name: f.read_bytes() for f in (run / "eval").iterdir() if not f.name.startswith(".")}
    assert {"heldout.json", "heldout.md", "heldout_samples.jsonl"} <= set(old)

    def killed(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(sudoku_eval, "markdown", killed)  # while the new files are made: nothing replaced yet
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "baseline=false", "sampler.modes=[rules]", "overwrite=true", "seed=5"])
    assert err.value.code == 130
    assert {f.name: f.read_bytes() for f in (run / "eval").iterdir() if not f.name.startswith(".")} == old
    monkeypatch.undo()
    renamed = []

    def killed_after_the_first(src, dst):
        if renamed:
            raise KeyboardInterrupt
        renamed.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(dgft.evaluate.os, "replace", killed_after_the_first)  # the samples in place, then killed
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "baseline=false", "sampler.modes=[rules]", "overwrite=true", "seed=5"])
    assert err.value.code == 130 and [p.name for p in renamed] == ["heldout_samples.jsonl"]
    assert not (run / "eval" / "heldout.json").exists() and not (run / "eval" / "heldout.md").exists()
    assert (run / "eval" / "heldout_samples.jsonl").read_bytes() != old["heldout_samples.jsonl"]
    assert not [f.name for f in (run / "eval").iterdir() if ".tmp-" in f.name]  # no temporary left


@pytest.mark.parametrize("name,make", [("metrics.jsonl", "folder"), ("checkpoints", "file"), ("train.log", "folder"),
                                       ("config.yaml", "folder")])
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
    mine = tmp_path / "checkpoints" / "step-best"  # a user's copy, under a name dgft never gives: left alone
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"mine")
    (tmp_path / "checkpoints" / "step-000001.tar").write_bytes(b"an archive")
    with pytest.warns(UserWarning, match="step-000001: .*removed, as checkpoints before the kept step-000002 are"):
        for step in (2, 3):
            ckpt.save(tmp_path, step, model, {"x": torch.zeros(1)}, {"step": step}, keep_last=1)
    assert [c.name for c in ckpt.checkpoints(tmp_path)] == ["step-best", "step-000003", "step-000009"]
    assert (tmp_path / "checkpoints" / "step-000001.tar").is_file()


def test_half_written_checkpoints_and_caches_of_killed_runs_are_removed(tmp_path):
    """A run killed while writing a checkpoint left `.tmp-step-N` for good (a full fine-tune's weights), and one
    killed while generating its data left `<cache>.tmp<pid>`: the next checkpoint removes the first, said; the next
    cache built beside the second removes it once it is a day old (a younger one may be another machine's build)."""
    from dgft.cache import ABANDONED_S, publish
    from dgft.model import build_tiny

    model = build_tiny(_tiny_model_cfg(), 812)
    left = tmp_path / "checkpoints" / ".tmp-step-000011"
    left.mkdir(parents=True)
    (left / "model.safetensors").write_bytes(b"half")
    with pytest.warns(UserWarning, match=r"\.tmp-step-000011: a checkpoint a killed run left half-written; removed"):
        ckpt.save(tmp_path, 12, model, {"x": torch.zeros(1)}, {"step": 12}, keep_last=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000012"]

    cache = tmp_path / "cache"
    old, young = cache / "sudoku-abc.tmp4242", cache / "sudoku-abc.tmp4343"
    for d in (old, young):
        d.mkdir(parents=True)
        (d / "rows.json").write_text("{}")
    os.utime(old, (time.time() - ABANDONED_S - 60,) * 2)
    publish(cache / "sudoku-abc", lambda tmp: tmp.mkdir() or (tmp / "rows.json").write_text("{}"))
    assert sorted(p.name for p in cache.iterdir()) == ["sudoku-abc", "sudoku-abc.tmp4343"]


def test_a_resume_killed_around_its_final_save_is_finished_by_the_next_resume(trained, tmp_path, capsys):
    """A resume killed after writing train_summary.json but before removing `.resuming` (or after writing
    `.resuming` but before it trained) left a run that `dgft train resume=RUN` called finished and `dgft eval RUN`
    refused as mid-resume, each sending the user to the other. The next resume saves the final weights again from
    the checkpoint (the same weights) and clears the mark; the run then evaluates."""
    from dgft import runs

    run = _copy(trained, tmp_path)
    before = ckpt.weight_hashes(run / "model")
    (run / runs.RESUMING).write_text("4\n")
    main(["train", f"resume={run}"])
    assert not (run / runs.RESUMING).exists() and ckpt.weight_hashes(run / "model") == before
    assert "nothing to train" not in capsys.readouterr().out
    main(["eval", str(run), "baseline=false", "plot=false", "sampler.modes=[rules]", "limit=1"])
    (run / "loss.png").unlink()  # killed after the summary, before the picture: made by the next resume
    main(["train", f"resume={run}"])  # finished now, and said so
    assert "nothing to train" in capsys.readouterr().out and (run / "loss.png").is_file()


def test_a_resume_refuses_a_config_edited_since_its_checkpoint(trained, tmp_path, capsys):
    """RUN/config.yaml edited by hand (lr 0.003 -> 0.01) was resumed without a word: the optimizer's state kept the
    old rate, while the record (and train_summary's settings_sha256) named the new one; other keys would have changed
    the training. Each checkpoint records its settings, and a resume names the keys that differ."""
    run = _copy(trained, tmp_path)
    config = run / "config.yaml"
    text = config.read_text()
    assert "  lr: 0.003\n" in text and "  warmup_steps: " in text
    config.write_text(text.replace("  lr: 0.003\n", "  lr: 0.01\n"))
    with pytest.raises(SystemExit) as err:
        main(["train", f"resume={run}", "trainer.max_steps=6"])
    said = capsys.readouterr().err
    assert err.value.code == 2 and "trainer.lr=0.01 (trained with 0.003)" in said and "was trained" in said, said
    with pytest.raises(SystemExit):  # the trained value given back on the command line: the file is named first
        main(["train", f"resume={run}", "trainer.lr=0.003"])
    assert "trainer.lr=0.01 (trained with 0.003)" in capsys.readouterr().err
    config.write_text(text)  # put back: the resume trains on
    main(["train", f"resume={run}", "trainer.max_steps=6"])
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 6


def _reseal(checkpoint):
    """The manifest written again over the checkpoint's files as they are now (what a hand edit would do)."""
    files = ckpt.file_records(checkpoint, [p for p in sorted(checkpoint.iterdir()) if p.name != ckpt.MANIFEST])
    step = int(checkpoint.name.removeprefix("step-"))
    (checkpoint / ckpt.MANIFEST).write_text(json.dumps({"step": step, "files": files}))


def test_a_checkpoint_that_matches_its_manifest_but_cannot_be_restored_is_named(trained, tmp_path, capsys):
    """Files sealed again after an edit pass the manifest: a step in extra.json other than the folder's was trusted
    (the run resumed past steps it never trained), and an unreadable trainer state was a traceback advising
    weights_only=False. The first is now a checkpoint skipped for the one before (said); the second names the
    checkpoint and how to resume from the one before."""
    run = _copy(trained, tmp_path)
    newest = ckpt.checkpoints(run)[-1]
    assert newest.name == "step-000004"
    extra = json.loads((newest / ckpt.EXTRA).read_text())
    (newest / ckpt.EXTRA).write_text(json.dumps({**extra, "step": 6}))
    _reseal(newest)
    with pytest.warns(UserWarning, match="step-000004: its name says step 4, its manifest.json 4 and its extra.json 6"):
        assert ckpt.latest_valid(run).name == "step-000002"
    (newest / ckpt.EXTRA).write_text(json.dumps(extra))
    _reseal(newest)
    manifest = json.loads((newest / ckpt.MANIFEST).read_text())
    manifest["files"][ckpt.EXTRA]["bytes"] = None  # valid JSON of the wrong shape: invalid, not a traceback
    (newest / ckpt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="step-000004: missing or invalid manifest.json"):
        assert ckpt.latest_valid(run).name == "step-000002"
    (newest / ckpt.TRAINER_STATE).write_bytes(b"not a pickle")
    _reseal(newest)
    with pytest.raises(SystemExit) as err:
        main(["train", f"resume={run}", "trainer.max_steps=6"])
    said = capsys.readouterr().err
    assert err.value.code == 2 and "step-000004: its files match its manifest" in said and "mv " in said, said
    assert "weights_only" not in said


def test_a_run_killed_before_its_first_checkpoint_is_named_as_such(trained, tmp_path, capsys):
    """Killed after some steps but before its first checkpoint, a run was said to have "stopped before its first
    step", and a fresh train in its folder sent the user to `resume=`, which had nothing to resume."""
    import shutil

    run = _copy(trained, tmp_path)
    for name in ("checkpoints", "model", "train_summary.json"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    (run / "checkpoints" / ".tmp-step-000002").mkdir(parents=True)  # the first, half-written
    with pytest.raises(SystemExit):
        main(["train", f"resume={run}"])
    said = capsys.readouterr().err
    assert "stopped before its first checkpoint was written, every trainer.ckpt_every=2 steps" in said, said
    with pytest.raises(SystemExit):
        main(["train", f"hydra.run.dir={run}", "trainer.max_steps=4", *TINY])
    said = capsys.readouterr().err
    assert "stopped before its first checkpoint" in said and f"rm -r {run}" in said and "resume=" not in said, said


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


def test_a_resume_with_an_added_key_names_it_as_no_setting_of_the_run(trained, tmp_path, capsys):
    """`dgft train resume=RUN +trainer.lrr=1` said "but the run has trainer.lrr=None", as if the run had the key."""
    run = _copy(trained, tmp_path)
    with pytest.raises(SystemExit) as err:
        main(["train", f"resume={run}", "+trainer.lrr=1"])
    said = capsys.readouterr().err
    assert err.value.code == 2 and "trainer.lrr is no setting of the run" in said and "None" not in said, said
    with pytest.raises(SystemExit):  # a key given twice: the value in effect (the last) is quoted, not the first
        main(["train", f"resume={run}", "seed=0", "seed=4"])
    assert "seed=4, but the run has seed=0" in capsys.readouterr().err


def test_a_held_out_split_compressed_again_is_the_same_split_and_a_missing_one_is_named(tmp_path):
    """An infill run's split is a .jsonl.gz, whose header holds a time: gunzipped and gzipped again it is another
    file with the same examples, still the split (a resume compares it so too). Missing, the reader names it."""
    import gzip

    from dgft.runs import RunError, heldout_records, require_heldout

    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    split = data / "heldout.jsonl.gz"
    split.write_bytes(gzip.compress(b'{"kind": "line"}\n', mtime=1))
    (tmp_path / "run" / "train_summary.json").write_text(json.dumps({"heldout": heldout_records(data)}))
    split.write_bytes(gzip.compress(gzip.decompress(split.read_bytes()), mtime=2, compresslevel=1))
    assert require_heldout(tmp_path / "run", split) == split
    split.write_bytes(gzip.compress(b'{"kind": "multi_line"}\n', mtime=1))
    with pytest.raises(RunError, match="heldout.jsonl.gz (has|changed)"):
        require_heldout(tmp_path / "run", split)
    split.unlink()
    assert require_heldout(tmp_path / "run", split) == split  # the reader says "file not found"


def test_eval_refuses_a_pipe_and_a_result_name_too_long_for_a_file(trained, tmp_path, capsys):
    """`data=<(cat file)`: the puzzles came from one reading of the pipe and the recorded sha256 from a second one,
    of nothing (a FIFO blocked the second for good). A result name too long for a file name was an OSError traceback."""
    import signal

    run = _copy(trained, tmp_path)
    fifo = tmp_path / "puzzles.csv"
    os.mkfifo(fifo)

    def hung(*_):
        raise TimeoutError("the evaluation blocked on the FIFO")

    before = signal.signal(signal.SIGALRM, hung)  # a regression fails here instead of hanging the suite
    signal.alarm(120)
    try:
        for args, said in ((["data=" + str(fifo)], "not a regular file"),
                           (["name=" + "n" * 250], "too long for its files' names"),
                           (["name=" + "n" * 235], "too long for its files' names")):  # its temporary's would be
            with pytest.raises(SystemExit) as err:
                main(["eval", str(run), "baseline=false", *args])
            out = capsys.readouterr().err
            assert err.value.code == 2 and said in out and "Traceback" not in out, out
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def test_an_export_into_a_folder_the_run_writes_is_refused(trained, tmp_path, capsys):
    """`out=RUN/checkpoints/step-000001`: exported, then deleted by the next resume's pruning (it is no valid
    checkpoint). Any folder the run writes is refused; the run's own export/ beside them is the default."""
    run = _copy(trained, tmp_path)
    for inside in ("checkpoints/step-000001", "model/sub"):
        with pytest.raises(SystemExit) as err:
            main(["export", str(run), f"out={run / inside}"])
        out = capsys.readouterr().err
        assert err.value.code == 2 and f"inside the run's {inside.split('/')[0]}/" in out, out
        assert not (run / inside).exists()


def test_a_limit_larger_than_the_file_is_said_as_all_of_it():
    from dgft.evaluate import provenance_line

    assert provenance_line({"limit": 100, "n": 5, "seed": 0}).endswith("; seed 0; all of the file.\n\n")
    assert provenance_line({"limit": 5, "n": 5, "seed": 0}).endswith("the first 5 of the file.\n\n")
    assert "the first 4 of" in provenance_line({"limit": 4, "n": 2, "too_long": {"line": 2}, "seed": 0})


def test_resume_auto_names_a_run_path_of_the_wrong_kind_before_hydra_opens_its_log(trained, tmp_path, monkeypatch):
    """`train.log/` a folder in the run resume=auto picks: Hydra's log handler failed on it with a traceback."""
    import shutil

    from dgft.runs import RunError, run_dir_for

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "sudoku" / "2026-01-01_00-00-00"
    shutil.copytree(trained, run, symlinks=True)
    summary = json.loads((run / "train_summary.json").read_text())
    (run / "train_summary.json").write_text(json.dumps({**summary, "stopped_by": "SIGTERM", "steps": 2}))
    assert run_dir_for("sudoku", "auto") == str(run.relative_to(tmp_path))
    (run / "train.log").unlink(missing_ok=True)
    (run / "train.log").mkdir()
    with pytest.raises(RunError, match="train.log: a folder where the run keeps its train.log file"):
        run_dir_for("sudoku", "auto")


def test_export_says_merge_into_changes_nothing_for_a_run_that_is_not_4bit(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    main(["export", str(run), "merge_into=base"])
    assert ("note: merge_into=base is read only for a 4-bit run (model.quantize=nf4)" in capsys.readouterr().err)
    assert (run / "export" / "config.json").is_file()


def test_a_result_name_with_the_results_suffix_drops_it(capsys):
    from omegaconf import OmegaConf

    from dgft.evaluate import output_name

    assert output_name(OmegaConf.create({"name": "easy50.json", "checkpoint": None}), "x") == "easy50"
    assert "note: name=easy50.json: the result is named easy50" in capsys.readouterr().err
    assert output_name(OmegaConf.create({"name": "v1.2", "checkpoint": None}), "x") == "v1.2"
    assert output_name(OmegaConf.create({"name": ".json", "checkpoint": None}), "x") == ".json"


def test_a_resume_without_its_metrics_file_says_what_is_lost(tmp_path, capsys):
    """metrics.jsonl deleted before a resume: its rows up to the checkpoint were lost without a word."""
    from dgft.resume import truncate_metrics

    truncate_metrics(tmp_path / "metrics.jsonl", 10)
    assert "metrics.jsonl is missing: the rows of steps 1-10" in capsys.readouterr().out
    truncate_metrics(tmp_path / "metrics.jsonl", 0)  # a run that had trained nothing has lost nothing
    assert capsys.readouterr().out == ""
