"""The run directory belongs to one run: a new run refuses another's directory, one `dgft train` writes it at a
time, a resume that has not ended leaves no stale final weights, and a refused start leaves nothing behind."""

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dgft import checkpoint as ckpt
from dgft.runs import RunError
from test_faults import _cmd, _run


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".train.lock"}  # the lock holds the pid of the last process to take it


def test_a_new_run_refuses_a_directory_that_holds_a_run(tmp_path):
    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run, "trainer.max_steps=2")).returncode == 0
    before = _files(run)
    out = _run(_cmd(tmp_path, run, "trainer.max_steps=4", "seed=5"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"{run} already holds a run (config.yaml, metrics.jsonl, checkpoints, model" in out.stderr
    assert f"resume={run}" in out.stderr
    assert _files(run) == before  # Hydra's record of the first command too
    for spelling in ("+", "++"):  # the directory given as an appended override: refused before Hydra writes too
        cmd = _cmd(tmp_path, run, "trainer.max_steps=4", "model.num_layers=1")
        cmd[4] = f"{spelling}{cmd[4]}"
        out = _run(cmd)
        assert out.returncode != 0 and "already holds a run" in out.stderr and "Traceback" not in out.stderr
        assert _files(run) == before

    from dgft.cli import compose_train
    from dgft.runs import RunInUse
    from dgft.train import train

    cfg = compose_train(["trainer.max_steps=1"])
    with pytest.raises(RunInUse, match="already holds a run"):  # the Python API refuses it as well
        train(cfg, run)
    assert _files(run) == before


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    """The default run directory is made when it is named, not later by Hydra: a second run in the same second
    (`for s in 0 1; do dgft train seed=$s & done`) gets the next name instead of writing into the first one's."""
    from dgft.runs import run_dir_for

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "2026-01-01_00-00-00")
    names = [run_dir_for("sudoku", None) for _ in range(3)]
    assert names == ["outputs/sudoku/2026-01-01_00-00-00", "outputs/sudoku/2026-01-01_00-00-00_1",
                     "outputs/sudoku/2026-01-01_00-00-00_2"]
    assert all(Path(name).is_dir() for name in names)


def test_a_run_being_written_is_not_resumed_by_a_second_process(tmp_path):
    from dgft.runs import RunInUse, writing

    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run, "trainer.max_steps=2")).returncode == 0
    with writing(run):  # as a training process holds it
        out = _run(_cmd(tmp_path, run, "trainer.max_steps=4", f"resume={run}"))
        with pytest.raises(RunInUse):
            with writing(run):
                pass
    assert out.returncode == 2 and "another `dgft train` (pid" in out.stderr and "Traceback" not in out.stderr
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 2  # untouched
    assert _run(_cmd(tmp_path, run, "trainer.max_steps=4", f"resume={run}")).returncode == 0  # once it is free


def test_a_killed_resume_leaves_no_stale_weights_and_resumes_to_its_checkpoint(tmp_path):
    """A finished run resumed for more steps and killed: its final weights are those of before the resume, so
    eval and export refuse them (naming the checkpoints), resume=auto finds the run, and a resume to the step of
    its newest checkpoint saves that checkpoint's weights instead of calling the old ones saved."""
    from dgft.cli import main

    run = tmp_path / "outputs" / "sudoku" / "run"
    assert _run(_cmd(tmp_path, run, "trainer.max_steps=4")).returncode == 0
    out = _run(_cmd(tmp_path, run, "trainer.max_steps=8", f"resume={run}"), env={"DGFT_TEST_KILL_AT_STEP": "7"})
    assert out.returncode == -signal.SIGKILL
    assert not (run / "train_summary.json").exists() and (run / ".resuming").read_text() == "4\n"
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "limit=1", "plot=false"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        main(["export", str(run)])
    assert not (run / "export").exists()

    out = _run(_cmd(tmp_path, run, "trainer.max_steps=6", f"resume={run}"))
    assert out.returncode == 0 and "nothing to train" not in out.stdout + out.stderr
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 6 and not (run / ".resuming").exists()
    saved, newest = load_file(str(run / "model" / "model.safetensors")), ckpt.latest_valid(run)
    assert newest.name == "step-000006"
    at6 = load_file(str(newest / "model.safetensors"))
    assert saved.keys() == at6.keys() and all(torch.equal(saved[k], at6[k]) for k in saved)
    out = _run(_cmd(tmp_path, run, "trainer.max_steps=6", f"resume={run}"))
    assert "nothing to train" in out.stdout + out.stderr
    main(["export", str(run), "checkpoint=step-4"])  # beside the final model's export, not over it
    assert (run / "export_step-000004" / "export.json").is_file() and not (run / "export").exists()


def test_resume_through_the_latest_link_keeps_the_link(tmp_path, monkeypatch):
    from dgft.train import _link_latest

    runs = tmp_path / "outputs" / "sudoku"
    (runs / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    _link_latest(Path("outputs/sudoku/a"))
    _link_latest(Path("outputs/sudoku/latest"))  # a run reached through the link
    assert (runs / "latest").readlink() == Path("a") and (runs / "latest").resolve() == (runs / "a").resolve()


def test_resume_errors_in_the_run_record_name_the_file(tmp_path):
    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run, "trainer.max_steps=2", "trainer=cpu")).returncode == 0
    # a group given with a key that may change, in either order: only max_steps differs
    assert _run(_cmd(tmp_path, run, "trainer=cpu", "trainer.max_steps=3", f"resume={run}")).returncode == 0
    hydra = run / ".hydra" / "hydra.yaml"
    hydra.write_text(hydra.read_text()[:200] + "\n  - [")
    out = _run(_cmd(tmp_path, run, "trainer.max_steps=4", "recipe=sudoku", f"resume={run}"))
    assert out.returncode == 2 and f"{hydra}: not a readable config" in out.stderr and "Traceback" not in out.stderr
    (run / "config.yaml").write_text("name: sudoku\ntask: [\n")
    out = _run(_cmd(tmp_path, run, "trainer.max_steps=4", f"resume={run}"))
    assert out.returncode == 2 and f"{run / 'config.yaml'}: not a readable config" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_refused_start_leaves_nothing_behind_and_the_log_records_the_run(tmp_path):
    lora = tmp_path / "lora"
    out = _run(_cmd(tmp_path, lora, "model.finetune=lora", "model.lora.target_modules=[nothing_here]"))
    assert out.returncode == 2 and "target_modules" in out.stderr and not lora.exists()
    cache = tmp_path / "a_file"
    cache.write_text("")
    out = _run(_cmd(tmp_path, tmp_path / "r", f"task.cache_dir={cache}"))
    assert out.returncode == 2 and f"{cache}: cannot make the data cache there" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r").exists()
    out = _run(_cmd(tmp_path, tmp_path / "r", "seed=-1"))
    assert out.returncode == 2 and "seed=-1: must be in [0, 2**32)" in out.stderr

    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run, "trainer.max_steps=3")).returncode == 0
    log = (run / "train.log").read_text()
    assert f"run dir: {run}" in log and "step 3: held-out" in log and "done: 3 steps" in log
    assert "trainer.max_steps=3: the learning rate never leaves its warmup" in log  # a smoke test, said so


def test_checkpoint_names_find_the_run_own_checkpoint_before_the_working_directory(tmp_path, monkeypatch):
    from dgft.runs import checkpoint_dir

    for name in ("run", "other"):
        ckpt_dir = tmp_path / name / "checkpoints" / "step-000002"
        ckpt_dir.mkdir(parents=True)
        (ckpt_dir / ckpt.MANIFEST).write_text("{}")
    monkeypatch.setattr(ckpt, "problem", lambda path: None)
    monkeypatch.chdir(tmp_path / "other")
    assert checkpoint_dir(tmp_path / "run", "checkpoints/step-000002") == tmp_path / "run/checkpoints/step-000002"
    with pytest.raises(RunError, match="is not one of .*run's checkpoints"):  # a path given in full is that path,
        checkpoint_dir(tmp_path / "run", str(tmp_path / "other/checkpoints/step-000002"))  # and not this run's


def test_eval_with_the_run_after_an_override_says_where_the_run_goes(capsys):
    from dgft.cli import main

    with pytest.raises(SystemExit) as err:
        main(["eval", "limit=1", "outputs/sudoku/latest"])
    assert err.value.code == 2 and ("'outputs/sudoku/latest' is not a key=value override; the run directory comes "
                                    "first") in capsys.readouterr().err


def test_a_flags_value_is_no_stray_word_and_a_bare_word_after_train_gets_a_hint(tmp_path, capsys):
    """`dgft eval RUN --cfg job` took `job` for a misplaced run directory; `dgft train sudoku` got Hydra's grammar
    error with no hint."""
    from dgft.cli import _stray, main

    assert _stray(["run=r", "--cfg", "job"]) is None and _stray(["--info", "config", "limit=1"]) is None
    assert _stray(["--cfg", "job", "r"]) == "r"
    with pytest.raises(SystemExit) as err:
        main(["train", "sudoku"])
    assert err.value.code == 2 and "did you mean recipe=sudoku?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["train", str(tmp_path)])
    assert err.value.code == 2 and f"did you mean resume={tmp_path}?" in capsys.readouterr().err
    main(["train", "--cfg", "job", "recipe=sudoku"])  # flags and their values pass
    assert "recipe" not in capsys.readouterr().err


def test_a_sweep_trains_each_job_and_checks_them_all_first(tmp_path):
    """`dgft train -m seed=3,4`: one run directory per job, each with its own seed; a sweep with one bad value is
    refused before any job starts (it used to stop at that job, after the jobs before it had trained)."""
    sweep = tmp_path / "sweep"
    cmd = [a for a in _cmd(tmp_path, tmp_path / "unused", "trainer.max_steps=2") if not a.startswith("seed=")]
    cmd.insert(cmd.index("train") + 1, "-m")
    out = _run([*cmd, "seed=3,4", f"hydra.sweep.dir={sweep}"])
    assert out.returncode == 0, out.stderr
    assert [json.loads((sweep / n / "train_summary.json").read_text())["steps"] for n in ("0", "1")] == [2, 2]
    assert [(sweep / n / "config.yaml").read_text().count("seed: ") for n in ("0", "1")] == [1, 1]
    assert "seed: 3" in (sweep / "0" / "config.yaml").read_text() and "seed: 4" in (sweep / "1" / "config.yaml").read_text()

    bad = tmp_path / "bad"
    out = _run([*cmd, "trainer.lr=0.001,-1", f"hydra.sweep.dir={bad}"])
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "sweep job" in out.stderr and "trainer.lr=-1" in out.stderr and "no job was started" in out.stderr
    assert not bad.exists()


def test_the_latest_link_moves_between_runs_and_leaves_a_latest_it_did_not_make(tmp_path):
    from dgft.train import _link_latest

    def run(name):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text("{}")
        return tmp_path / name

    link = tmp_path / "latest"
    _link_latest(run("a"))
    assert link.is_symlink() and link.readlink() == Path("a")
    _link_latest(run("b"))
    assert link.readlink() == Path("b")
    link.unlink()
    link.symlink_to("gone")  # a run deleted since: dgft's own link, replaced
    _link_latest(run("c"))
    assert link.readlink() == Path("c")
    for theirs in (tmp_path.parent, "notes"):  # a link out of the folder; one to a folder that is not a run
        (tmp_path / "notes").mkdir(exist_ok=True)
        link.unlink()
        link.symlink_to(theirs)
        _link_latest(tmp_path / "c")
        assert link.readlink() == Path(theirs)
    link.unlink()
    link.mkdir()  # a folder of the user's
    _link_latest(tmp_path / "c")
    assert link.is_dir() and not link.is_symlink()

