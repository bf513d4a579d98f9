"""Faults a long run meets: SIGKILL mid-run and resume, torn checkpoints, bad inputs, unsafe files.

Each test injects one fault and asserts the documented outcome; eval/RESULTS.md tabulates them.
"""

import json
import re
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from dgft import checkpoint as ckpt

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=16", "model.intermediate_size=64", "model.moe_intermediate_size=32"]


def _cmd(tmp_path, run, *extra):
    return [sys.executable, "-m", "dgft.cli", "train", f"hydra.run.dir={run}", f"task.cache_dir={tmp_path / 'c'}",
            "task.base_puzzles=20", "task.heldout_puzzles=4", "trainer.max_steps=7", "trainer.batch_size=8",
            "trainer.eval_every=3", "trainer.eval_puzzles=2", "trainer.ckpt_every=2", "trainer.keep_last=2",
            "trainer.log_every=1", "trainer.num_threads=1", "sampler.steps=4", "seed=3", *TINY, *extra]


def _run(cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def _weights(run):
    return load_file(str(Path(run) / "model" / "model.safetensors"))


def _losses(run):
    rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("finetune,extra,kill_at", [
    ("full", [], 3), ("full", [], 5), ("lora", [], 4), ("full", ["trainer.ema_decay=0.9"], 6),
    ("lora", ["model.lora.dropout=0.2"], 4),  # dropout draws from torch's global generator: restored too
    ("full", ["trainer.optimizer=muon", "trainer.muon_lr=0.006"], 5)],  # two optimizers' states (dgft.optim.Chained)
    ids=["full-kill3", "full-kill5", "lora-kill4", "ema-kill6", "lora-dropout-kill4", "muon-kill5"])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, finetune, extra, kill_at):
    """Killed after the step that follows a checkpoint (3, 5) or on a step whose checkpoint was not written yet (4,
    6; checkpoints every 2 steps). With trainer.ema_decay the saved model is the average, so it also checks that the
    average resumes."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _run(_cmd(tmp_path, ref, f"model.finetune={finetune}", *extra)).returncode == 0
    out = _run(_cmd(tmp_path, killed, f"model.finetune={finetune}", *extra),
               env={"DGFT_TEST_KILL_AT_STEP": str(kill_at)})
    assert out.returncode == -signal.SIGKILL
    assert not (killed / "train_summary.json").exists()
    base = killed / "base" / "model.safetensors"
    before = base.stat() if finetune == "lora" else None
    out = _run(_cmd(tmp_path, tmp_path / "other", f"model.finetune={finetune}", *extra, f"resume={killed}"))
    assert out.returncode == 0, out.stderr[-2000:]
    if finetune == "lora":  # the adapter's base is read back, never written again, and others may read it
        after = base.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        umask = os.umask(0)
        os.umask(umask)
        assert after.st_mode & 0o777 == 0o666 & ~umask
    assert "resumed from" in out.stdout + out.stderr
    sub = "adapter" if finetune == "lora" else "model"
    a = load_file(str(ref / sub / ("adapter_model.safetensors" if finetune == "lora" else "model.safetensors")))
    b = load_file(str(killed / sub / ("adapter_model.safetensors" if finetune == "lora" else "model.safetensors")))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ after kill at step {kill_at} and resume"
    assert _losses(ref) == _losses(killed)
    if "trainer.optimizer=muon" in extra:  # both rates logged, trainer.lr's (0.003) as `lr`
        rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
        assert all(r["muon_lr"] == pytest.approx(2 * r["lr"]) for r in rows if "loss" in r)
    if "trainer.ema_decay=0.9" in extra:  # the saved model is the average, not the last weights (those are in the
        # final checkpoint)
        last = load_file(str(ckpt.latest_valid(ref) / "model.safetensors"))
        assert any(not torch.equal(a[k], last[k]) for k in a)


def test_resume_keeps_the_run_config_and_refuses_other_changes(tmp_path):
    """`dgft train resume=RUN` continues with the run's config: the command line's default trainer.max_steps
    (3600 in recipe=sudoku) once replaced a run's own (here 200), changing its schedule; now only an explicit
    override does, and an override that would change anything else is refused, naming the key."""
    from omegaconf import OmegaConf

    from dgft.cli import compose_train
    from dgft.config import ConfigError
    from dgft.resume import resume_target

    run = tmp_path / "run"
    step = run / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (step / ckpt.EXTRA).write_text(json.dumps({"step": 2}))  # sealed by a manifest that lists it: a valid checkpoint
    (step / ckpt.MANIFEST).write_text(json.dumps({"step": 2, "files": ckpt.file_records(step, [step / ckpt.EXTRA])}))
    saved = compose_train(["recipe=sudoku", "trainer.max_steps=200", "trainer.lr=0.001"])
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))

    def resume(*extra):
        overrides = ["recipe=sudoku", f"resume={run}", *extra]
        return resume_target(compose_train(overrides), run, overrides)[0]

    assert resume().trainer.max_steps == 200
    assert resume("trainer.max_steps=400", "trainer.num_threads=1").trainer.max_steps == 400
    assert resume("trainer.lr=0.001").trainer.lr == 0.001  # the run's own value: nothing changes
    with pytest.raises(ConfigError, match=r"trainer\.lr=0\.002, but the run has trainer\.lr=0\.001 .*config\.yaml"):
        resume("trainer.lr=0.002")
    with pytest.raises(ConfigError, match=r"noise=mask, but the run's noise settings differ"):
        resume("noise=mask")

    def resume_with(*overrides):  # without the run's own recipe= in front
        overrides = [f"resume={run}", *overrides]
        return resume_target(compose_train(overrides), run, overrides)[0]

    assert resume_with("recipe=sudoku").trainer.max_steps == 200  # the recipe's 3600 is not an explicit override
    for other in ("recipe=infill", "recipe=sudoku_gpu"):  # a recipe has no config node of its own to compare
        with pytest.raises(ConfigError, match=rf"{other}, but the run was trained with recipe=sudoku"):
            resume_with(other)
    # a key config.yaml lost is refused with the value Hydra's record of the first command holds
    lost = OmegaConf.to_container(saved, resolve=True)
    del lost["trainer"]["batch_size"]
    (run / "config.yaml").write_text(OmegaConf.to_yaml(lost))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({**lost, "trainer": {"batch_size": 4}}))
    with pytest.raises(ConfigError, match=r"no trainer.batch_size .*put them back \(as .*run/.hydra/config.yaml "
                                          r"records them: trainer.batch_size=4\)"):
        resume()


def test_resume_with_another_recipe_is_refused_through_the_cli(tmp_path, capsys):
    """The same check inside `dgft train` (a Hydra app, where the config is composed again without the recipe)."""
    from omegaconf import OmegaConf

    from dgft.cli import compose_train, main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(compose_train(["recipe=sudoku"]), resolve=True))
    with pytest.raises(SystemExit) as err:
        main(["train", "recipe=infill", f"resume={run}", f"hydra.run.dir={tmp_path / 'other'}"])
    assert err.value.code == 2
    said = capsys.readouterr().err
    assert "recipe=infill, but the run was trained with recipe=sudoku" in said
    assert f"({run / 'config.yaml'})" in said  # no Hydra record here: the recipe's name in the config says it
    assert not list((run / ".hydra").glob("resume-*"))  # the refused command leaves no record in the run


def test_sigterm_finishes_step_and_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(tmp_path, run, "trainer.max_steps=100000", "trainer.ckpt_every=0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # wait until training is under way
        if "train:" in line and "1/100000" in line or "step 3:" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]  # as a shell reports it: `&& dgft eval` stops
    assert "resume with" in out
    assert ckpt.latest_valid(run) is not None and (run / "model" / "model.safetensors").exists()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM"
    # its final weights are an interrupted training's: eval and export say so, in what they write too
    from dgft.cli import main

    note = f"its training was stopped by SIGTERM at step {summary['steps']} of 100000, before its schedule ended"
    main(["eval", str(run), "limit=1", "baseline=false", "plot=false", "sampler.modes=[rules]", "sampler.views=1",
          "sampler.passes=1"])
    assert note in capsys.readouterr().err
    assert json.loads((run / "eval" / "heldout.json").read_text())["stopped_early"] == note
    assert note in (run / "eval" / "heldout.md").read_text()
    main(["export", str(run)])
    assert note in capsys.readouterr().err and f"**Note: {note}" in (run / "export" / "README.md").read_text()


def test_sigterm_while_generating_data_leaves_no_worker_no_lock_and_no_run(tmp_path):
    """Before the first step a signal cannot finish a step: the run stops with a message, its directory goes (a new
    run), and the data workers stop with it. They once lived on, holding the run's lock, after a silent exit."""
    import fcntl

    run = tmp_path / "run"
    cmd = [a for a in _cmd(tmp_path, run) if not a.startswith("task.base_puzzles=")] + ["task.base_puzzles=20000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    import time

    for line in proc.stdout:  # wait until the workers are generating
        if "generating" in line:
            break
    for _ in range(300):
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if len(children) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143 and "SIGTERM before the first step" in out and "Traceback" not in out, out[-2000:]
    assert children, "no data workers seen"
    for _ in range(100):  # the workers end with their parent
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"data workers left running: {alive}"
    assert not run.exists() or not list(run.iterdir())
    if run.exists() and (run / ".train.lock").exists():  # nobody holds the lock
        with open(run / ".train.lock") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_torn_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run, "trainer.keep_last=3")).returncode == 0
    cks = ckpt.checkpoints(run)
    assert len(cks) == 3
    newest = cks[-1]
    with open(newest / "model.safetensors", "r+b") as f:  # tear it: truncate the weights file
        f.truncate(100)
    torn = r"model\.safetensors has 100 bytes, the record says \d+; using an earlier checkpoint"  # the file named
    with pytest.warns(UserWarning, match=torn):
        assert ckpt.latest_valid(run) == cks[-2]
    (cks[-2] / "manifest.json").unlink()  # a checkpoint without a manifest is ignored too
    with pytest.warns(UserWarning):
        assert ckpt.latest_valid(run) == cks[-3]


def test_bad_override_names_the_key(tmp_path):
    out = _run(_cmd(tmp_path, tmp_path / "r", "trainer.lrr=0.1"))
    assert out.returncode != 0 and "lrr" in out.stderr
    out = _run(_cmd(tmp_path, tmp_path / "r", "trainer.lr=-1"))
    assert out.returncode == 2 and "trainer.lr" in out.stderr
    assert not (tmp_path / "r").exists()  # a refused run leaves no directory behind


def test_a_missing_pretrained_path_is_named_before_its_tokenizer(tmp_path):
    """recipe=sudoku_lora reads its tokenizer from model.path: a path that is not there is named as model.path."""
    out = _run(_cmd(tmp_path, tmp_path / "r", "recipe=sudoku_lora", f"model.path={tmp_path / 'nowhere'}",
                    "model.quantize=none", "trainer.optimizer=adamw", "device=cpu"))
    assert out.returncode == 2 and f"model.path='{tmp_path / 'nowhere'}': no such directory; pass" in out.stderr


def test_unwritable_output_dir_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """A run directory under a directory that cannot be written to: the message names the path, no traceback. The
    directory is made unwritable by stand-ins (root ignores permissions): it is reported as such, and creating
    anything under it fails as it would."""
    from dgft.cli import main

    ro = tmp_path / "ro"
    ro.mkdir()

    def refused(path) -> bool:
        return os.path.abspath(path) == str(ro) or os.path.abspath(path).startswith(f"{ro}{os.sep}")

    def no_mkdir(real):
        def mkdir(path, *args, **kwargs):
            if refused(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)
        return mkdir

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if refused(path) and mode & os.W_OK
                        else real_access(path, mode, **kw))
    monkeypatch.setattr(Path, "mkdir", no_mkdir(Path.mkdir))
    monkeypatch.setattr(os, "makedirs", no_mkdir(os.makedirs))
    monkeypatch.setattr(os, "mkdir", no_mkdir(os.mkdir))
    with pytest.raises(SystemExit) as err:
        main(_cmd(tmp_path, ro / "run")[3:])  # `dgft train ...`, in this process
    message = str(err.value.code) + capsys.readouterr().err
    assert f"cannot create hydra.run.dir={ro / 'run'}: no directory can be made in {ro} (Permission denied)" in message
    assert "Traceback" not in message and "Error executing job" not in message
    assert list(ro.iterdir()) == []


def test_weights_load_only_from_safetensors(tmp_path):
    """A model dir that holds only a pickle is refused, never unpickled."""
    from dgft.model import ModelLoadError, load_pretrained

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "diffusion_gemma"}))
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="model.path"):
        load_pretrained(str(d))


def test_a_model_path_of_another_kind_of_model_or_a_file_is_named(tmp_path):
    """A GPT-2 checkpoint at model.path failed deep inside transformers (a TypeError about a size); a file was taken
    for a hub id. Both are named before anything loads (the checks dgft train runs first)."""
    from dgft.model import ModelLoadError, require_path

    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    with pytest.raises(ModelLoadError, match=r"its config.json is a 'gpt2' model, not DiffusionGemma"):
        require_path(str(d))
    (d / "weights.bin").write_text("x")
    with pytest.raises(ModelLoadError, match=r"weights.bin': a file; pass the directory"):
        require_path(str(d / "weights.bin"))


def test_disk_full_keeps_previous_checkpoint_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    """A writer that fails with ENOSPC from the second checkpoint on: clear error, exit 2, step 2 intact."""
    import errno

    from dgft.cli import main

    real_save, calls = torch.save, {"n": 0}

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(_cmd(tmp_path, run, "trainer.num_threads=0")[3:])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "No space left on device" in msg and "step-000002" in msg and "resume" in msg
    assert re.search(r"No space left on device \(\d+ MiB free there\)", msg), msg  # torch's words name no disk
    assert [c.name for c in ckpt.checkpoints(run)] == ["step-000002"] and ckpt.is_valid(ckpt.checkpoints(run)[0])
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_a_full_disk_at_the_final_save_is_said_and_a_resume_saves_again(tmp_path, monkeypatch, capsys):
    """The final weights, or the loss picture, on a full disk: the first was a traceback (exit 1) with no way on, the
    second a traceback after a finished training, with a torn loss.png a resume never redrew. Now the first is said
    (exit 2) and a resume saves the weights; the second is a warning, and a resume draws the picture."""
    import errno

    import dgft.plots
    from dgft.cli import main

    real = ckpt.save_weights

    def full_at_the_end(model, out):
        if Path(out).name == "model":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, out)

    monkeypatch.setattr(ckpt, "save_weights", full_at_the_end)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(_cmd(tmp_path, run, "trainer.num_threads=0")[3:])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "Traceback" not in msg
    assert (f"could not save the final weights to {run / 'model'}: No space left on device. Checkpoint step-000007 is "
            f"intact: once there is space, `dgft train resume={run}` saves them") in msg, msg
    assert not (run / "train_summary.json").exists()
    monkeypatch.setattr(ckpt, "save_weights", real)

    def no_picture(metrics, out):
        Path(out).write_bytes(b"")  # torn, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dgft.plots, "plot_loss", no_picture)
    main(["train", f"resume={run}", "trainer.num_threads=0"])  # saves the weights; the picture fails, said
    assert (run / "model" / "model.safetensors").is_file() and (run / "train_summary.json").is_file()
    assert not (run / "loss.png").exists() and not list(run.glob(".loss*"))  # no torn picture, no temporary
    said = capsys.readouterr()
    assert f"warning: could not draw {run / 'loss.png'} (No space left on device)" in said.out + said.err
    monkeypatch.undo()
    main(["train", f"resume={run}", "trainer.num_threads=0"])  # nothing to train: the picture is drawn
    assert (run / "loss.png").stat().st_size > 0


def test_a_resume_of_a_run_it_cannot_write_is_refused_before_it_starts(tmp_path, monkeypatch, capsys):
    """A read-only run resumed: a PermissionError traceback from its first write (root ignores chmod, so the folder's
    refusal is simulated where dgft tries it)."""
    import tempfile

    from dgft.cli import main

    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run)).returncode == 0
    real = tempfile.mkdtemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == run:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(SystemExit) as err:
        main(["train", f"resume={run}", "trainer.max_steps=9"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "Traceback" not in msg
    assert (f"resume={run}: no directory can be made in {run} (Permission denied); a resumed run writes its "
            "checkpoints and weights there") in msg, msg
    assert not list((run / ".hydra").glob("resume-*"))  # a refused resume leaves no record


def test_output_dir_under_a_file_fails_with_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = _run(_cmd(tmp_path, blocker / "run"))
    assert out.returncode == 2 and f"{blocker} is not a directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_corrupted_data_cache_is_regenerated(tmp_path):
    from omegaconf import OmegaConf

    from dgft.config import TaskConfig
    from dgft.data import build_splits, cache_key

    cfg = OmegaConf.structured(TaskConfig(base_puzzles=10, heldout_puzzles=4, cache_dir=str(tmp_path)))
    first = list(build_splits(cfg, seed=1, workers=1, log=lambda *_: None)["train"]["puzzle"])
    path = tmp_path / f"sudoku-{cache_key(cfg, 1)}"
    for arrow in path.rglob("*.arrow"):
        arrow.write_bytes(b"garbage")
    messages = []
    again = build_splits(cfg, seed=1, workers=1, log=messages.append)
    assert any("unreadable cache" in m for m in messages)
    assert list(again["train"]["puzzle"]) == first  # regenerated identically from the seed


def test_lora_with_no_matching_module_names_the_key(cfg):
    from dgft.config import ConfigError
    from dgft.model import attach_lora, build_tiny

    model = build_tiny(cfg.model, 812)
    cfg.model.lora.target_modules = ["no_such_proj"]
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        attach_lora(model, cfg.model.lora)


def test_out_of_memory_names_the_settings_that_help(tmp_path, monkeypatch, capsys):
    from dgft import step as S
    from dgft.cli import main

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(S, "batch_loss", oom)
    with pytest.raises(SystemExit) as err:
        main(_cmd(tmp_path, tmp_path / "run", "trainer.num_threads=0")[3:])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "trainer.batch_size" in msg and "gradient_checkpointing" in msg


def test_resume_auto_picks_the_newest_resumable_run(tmp_path):
    """`resume=auto` continues the newest run under outputs/<name>/ that has a valid checkpoint."""
    base = _cmd(tmp_path, "x")
    cmd = [c for c in base if not c.startswith("hydra.run.dir=")]
    env = {"DGFT_TEST_KILL_AT_STEP": "5"}
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert out.returncode == -signal.SIGKILL
    (run,) = [p for p in (tmp_path / "outputs" / "sudoku").iterdir() if p.is_dir() and not p.is_symlink()]
    finished = tmp_path / "outputs" / "sudoku" / "2999-01-01_00-00-00"  # newer, but finished: passed over
    assert _run(_cmd(tmp_path, finished, "trainer.max_steps=2")).returncode == 0
    out = subprocess.run(cmd + ["resume=auto"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resumed from {run}" in out.stdout + out.stderr or "resumed from outputs" in out.stdout + out.stderr
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 7


def _tb_steps(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run) / "tb"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_resume_in_place_keeps_eval_rows_tensorboard_and_the_recipe_record(tmp_path):
    """A run killed after a step whose evaluation and checkpoint were written, resumed as `dgft train resume=RUN`
    (Hydra's run dir is then RUN itself): the evaluation row survives (it was flushed before the checkpoint),
    TensorBoard holds each step once, and the recipe Hydra recorded first is still what a resume is checked
    against (a resume's own record goes to .hydra/resume-<time>/)."""
    run = tmp_path / "run"
    cmd = _cmd(tmp_path, run, "trainer.max_steps=8", "trainer.eval_every=4", "trainer.ckpt_every=4")
    assert _run(cmd, env={"DGFT_TEST_KILL_AT_STEP": "5"}).returncode == -signal.SIGKILL
    out = _run(cmd + [f"resume={run}"])
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" not in r] == [4, 8]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert _tb_steps(run, "train/loss") == list(range(1, 9))
    assert len(list((run / ".hydra").glob("resume-*/overrides.yaml"))) == 1
    out = _run(cmd + ["recipe=sudoku_lora", f"resume={run}", "trainer.max_steps=10"])
    assert out.returncode == 2 and "recipe=sudoku_lora, but the run was trained with recipe=sudoku" in out.stderr
    assert f"({run / '.hydra' / 'hydra.yaml'})" in out.stderr  # where Hydra recorded the choice


def test_a_resume_that_extends_max_steps_follows_the_stretched_schedule_from_its_first_step(tmp_path):
    """`trainer.max_steps=N` on resume stretches the cosine over N steps; the first resumed step took the rate the
    checkpoint saved for the old schedule (the floor, for a finished run), the next ones the new schedule's."""
    def rates(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["lr"] for r in rows if "lr" in r}

    short, straight = tmp_path / "short", tmp_path / "straight"
    assert _run(_cmd(tmp_path, short, "trainer.max_steps=4", "trainer.warmup_steps=1")).returncode == 0
    out = _run(_cmd(tmp_path, short, f"resume={short}", "trainer.max_steps=8", "trainer.warmup_steps=1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert _run(_cmd(tmp_path, straight, "trainer.max_steps=8", "trainer.warmup_steps=1")).returncode == 0
    resumed, whole = rates(short), rates(straight)
    assert [resumed[step] for step in range(5, 9)] == [whole[step] for step in range(5, 9)], (resumed, whole)
    assert resumed[4] < whole[4]  # the first session's schedule ended at 4 steps


def test_resume_of_a_finished_run_leaves_it_as_it_is(tmp_path):
    """Nothing left to train (max_steps reached, or the time limit already used): said, and the run untouched; a
    time-limited run does not sneak in one more step per resume."""
    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run)).returncode == 0
    summary = (run / "train_summary.json").read_text()
    assert json.loads(summary)["final_loss"] is not None
    out = _run(_cmd(tmp_path, run, f"resume={run}"))
    assert out.returncode == 0 and "nothing to train" in out.stdout + out.stderr
    assert (run / "train_summary.json").read_text() == summary
    assert not list((run / ".hydra").glob("resume-*"))  # no record of a command that trained nothing
    out = _run(_cmd(tmp_path, run, f"resume={run}", "trainer.max_steps=-5"))  # an error, not "nothing to train"
    assert out.returncode == 2 and "trainer.max_steps=-5: must be > 0" in out.stderr
    out = _run(_cmd(tmp_path, run, f"resume={run}", "trainer.max_steps=3"))  # its checkpoint is past step 3: refused,
    assert out.returncode == 2 and "trainer.max_steps=3: below step 7 of the checkpoint" in out.stderr  # not "done"
    assert (run / "train_summary.json").read_text() == summary

    timed = tmp_path / "timed"
    first = _run(_cmd(tmp_path, timed, "trainer.max_steps=1000", "trainer.time_limit_min=0.0001"))
    assert first.returncode == 0
    steps = json.loads((timed / "train_summary.json").read_text())["steps"]
    assert steps < 1000
    warmup = OmegaConf.load(timed / "config.yaml").trainer.warmup_steps
    assert steps <= warmup  # 6 ms: within the warmup, said, as the run ends at a warmup rate, not annealed
    assert f"note: the time limit came during warmup (step {steps} of trainer.warmup_steps={warmup})" in \
        first.stdout + first.stderr
    out = _run(_cmd(tmp_path, timed, "trainer.max_steps=1000", "trainer.time_limit_min=0.0001", f"resume={timed}"))
    assert out.returncode == 0 and "nothing to train" in out.stdout + out.stderr
    assert json.loads((timed / "train_summary.json").read_text())["steps"] == steps
    assert [c.name for c in ckpt.checkpoints(timed)][-1] == f"step-{steps:06d}"


def test_an_unreadable_run_record_is_kept_aside_when_a_resume_adds_its_session(tmp_path):
    """run.json keeps one record per training session; an edited or torn one is not silently replaced: it is kept
    beside the new record, and said. An export's card reads what it can of it, never a traceback."""
    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run, "trainer.max_steps=4")).returncode == 0
    (run / "run.json").write_text('{"sessions": 5, "dgft_commit": 7}')
    out = _run(_cmd(tmp_path, run, f"resume={run}", "trainer.max_steps=6"))
    assert out.returncode == 0, out.stderr[-2000:]
    kept = list(run.glob("run.json.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == '{"sessions": 5, "dgft_commit": 7}'
    assert "kept as run.json.unreadable-" in out.stdout + out.stderr
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert [s["start_step"] for s in sessions] == [4] and sessions[0]["dtype"] == "float32"  # what eval loads a base in
    (run / "run.json").write_text('{"sessions": "x", "dgft_commit": 7, "cpu": ["a"]}')
    export = _run([sys.executable, "-m", "dgft.cli", "export", str(run)])
    assert export.returncode == 0 and "Traceback" not in export.stderr, export.stderr[-2000:]


def test_resume_of_no_such_run_creates_nothing(tmp_path):
    """`dgft train resume=TYPO` (the run dir is then TYPO itself): a clear error before Hydra makes the dir."""
    cmd = [c for c in _cmd(tmp_path, "x", "resume=typo") if not c.startswith("hydra.run.dir=")]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "resume=typo: no such run" in out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_checkpoint_errors_that_are_not_oserror_keep_the_previous_one(tmp_path, monkeypatch):
    """A full disk reaches torch.save as RuntimeError and safetensors as its own error, not OSError: still a
    CheckpointError, no temporary directory left. Saving a step again replaces it only once the new copy is
    complete: a failure in between leaves the old copy."""
    from dgft.model import build_tiny

    model = build_tiny(_tiny_model_cfg(), 812)
    first = ckpt.save(tmp_path, 2, model, {"x": torch.zeros(1)}, {"step": 2})
    real_save = torch.save

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(ckpt.torch, "save", full)
    for step in (4, 2):  # a new step, and the same step again
        with pytest.raises(ckpt.CheckpointError, match="PytorchStreamWriter"):
            ckpt.save(tmp_path, step, model, {"x": torch.zeros(1)}, {"step": step})
        assert ckpt.checkpoints(tmp_path) == [first] and ckpt.is_valid(first)
        assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    real_replace = os.replace

    def crash_after_moving_aside(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise KeyboardInterrupt  # killed between moving the old copy aside and renaming the new one
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_after_moving_aside)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(tmp_path, 2, model, {"x": torch.ones(1)}, {"step": 2})
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert ckpt.latest_valid(tmp_path) is not None  # the old copy, found under its aside name
    assert ckpt.load_extra(ckpt.latest_valid(tmp_path)) == {"step": 2}


def test_checkpoints_past_a_million_steps_sort_by_step(tmp_path):
    """step-1000000 has seven digits and sorts before step-999999 as text: kept and found as the newest by its
    number, so pruning never deletes the checkpoint just written and resume does not go back."""
    from dgft.model import build_tiny

    model = build_tiny(_tiny_model_cfg(), 812)
    for step in (998000, 999000, 1000000, 1001000):
        ckpt.save(tmp_path, step, model, {"x": torch.zeros(1)}, {"step": step}, keep_last=2)
    assert [c.name for c in ckpt.checkpoints(tmp_path)] == ["step-1000000", "step-1001000"]
    assert ckpt.latest_valid(tmp_path).name == "step-1001000"


def test_torn_metrics_row_and_unknown_saved_key_on_resume(tmp_path):
    from omegaconf import OmegaConf

    from dgft.cli import compose_train
    from dgft.config import ConfigError, typed_train_config
    from dgft.resume import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n{"step": 3, "lo')
    truncate_metrics(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n'
    path.write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n{"step": "x"}\n{"step": 2, "loss": 1.0}\n{"step": 3}\n')
    truncate_metrics(path, 2)  # rows that are not metrics rows: dropped, said, not a traceback
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n'
    saved = OmegaConf.create(OmegaConf.to_yaml(compose_train(["recipe=sudoku"]), resolve=True))
    saved.trainer.save_every = 5
    with pytest.raises(ConfigError, match=r"RUN/config.yaml: trainer.save_every: not a setting"):
        typed_train_config(saved, source="RUN/config.yaml", missing="refuse")


def test_a_saved_config_lacking_a_key_is_refused_on_resume_and_said_on_eval(tmp_path, capsys):
    """A resume trains with the run's saved config: a key the file lacks (an edit) would silently take the schema's
    default (batch 64 where the run trained at 32), so it is refused, naming it and its default; an evaluation or
    export takes the default and says so. A wrong type is named with the file and key before any work."""
    from omegaconf import OmegaConf

    from dgft.cli import compose_train
    from dgft.config import ConfigError, typed_train_config
    from dgft.runs import load_config

    saved = OmegaConf.create(OmegaConf.to_yaml(compose_train(["recipe=sudoku"]), resolve=True))
    del saved.trainer["batch_size"]
    with pytest.raises(ConfigError, match=r"RUN/config.yaml: no trainer.batch_size \(edited, .*put them back \(the "
                                          r"defaults: trainer.batch_size=64\)"):
        typed_train_config(saved, source="RUN/config.yaml", missing="refuse")
    with pytest.raises(ConfigError, match=r"no name, seed, device, resume, task.name, .* and \d+ more"):
        typed_train_config(OmegaConf.create({}), source="RUN/config.yaml", missing="refuse")
    # keys a resume may change are filled (their defaults, or the command line's), not refused
    lean = saved.copy()
    del lean.trainer["time_limit_min"]
    del lean.task["cache_dir"]
    lean.trainer.batch_size = 32
    from dgft.resume import RESUME_MAY_CHANGE

    typed = typed_train_config(lean, source="RUN/config.yaml", missing="refuse", may_fill=RESUME_MAY_CHANGE)
    assert typed.trainer.time_limit_min == 0 and typed.trainer.batch_size == 32
    # a key this version does not know: refused on resume, left out (and said) on evaluation
    old = saved.copy()
    old.trainer.batch_size = 32
    old.trainer.save_every = 5
    with pytest.raises(ConfigError, match="trainer.save_every: not a setting of this version"):
        typed_train_config(old, source="RUN/config.yaml", missing="refuse")
    capsys.readouterr()
    assert "save_every" not in typed_train_config(old, source="RUN/config.yaml").trainer
    assert "RUN/config.yaml: trainer.save_every: not a setting of this version of dgft; left out" in capsys.readouterr().err
    record = ("RUN/.hydra/config.yaml", OmegaConf.create({"trainer": {"batch_size": 4}}))  # what the run trained with
    with pytest.raises(ConfigError, match=r"put them back \(as RUN/.hydra/config.yaml records them: "
                                          r"trainer.batch_size=4\)"):
        typed_train_config(saved, source="RUN/config.yaml", missing="refuse", recorded=record)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    assert load_config(run).trainer.batch_size == 64
    assert "config.yaml: no trainer.batch_size; using the defaults: trainer.batch_size=64" in capsys.readouterr().err
    saved.trainer.batch_size = 32
    saved.sampler.steps = "abc"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    with pytest.raises(ConfigError, match=r"run/config.yaml: sampler.steps: Value 'abc' (of type 'str' )?could not be "
                                          r"converted to Integer"):
        load_config(run)


def _tiny_model_cfg():
    from omegaconf import OmegaConf

    from dgft.cli import compose_train

    cfg = compose_train([*TINY])
    return OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))


def test_a_resumed_lora_run_trains_on_the_base_saved_beside_it(tmp_path):
    """A tiny LoRA run's base is its seed's initial weights, saved once. A resume reads that file back rather than
    trusting the seed to rebuild the same weights (another machine, another torch), since eval and export merge
    the adapter into the file. A base that cannot be read is an error naming it; nothing is written over it."""
    from omegaconf import OmegaConf

    from dgft.config import TrainRecipe
    from dgft.model import build_tiny
    from dgft.runs import RunError
    from dgft.train import keep_base

    cfg = OmegaConf.structured(TrainRecipe())
    for item in TINY:
        key, value = item.split("=")
        OmegaConf.update(cfg, key, int(value))
    saved, rebuilt = build_tiny(cfg.model, 40, seed=0), build_tiny(cfg.model, 40, seed=1)
    base = tmp_path / "run" / "base"
    base.parent.mkdir()
    keep_base(saved, base)
    assert sorted(p.name for p in base.parent.iterdir()) == ["base"]  # no temporary dir left
    stamp = (base / "model.safetensors").stat().st_mtime_ns
    keep_base(rebuilt, base)
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), rebuilt.state_dict().values()))
    assert (base / "model.safetensors").stat().st_mtime_ns == stamp
    (base / "model.safetensors").write_bytes(b"torn")
    with pytest.raises(RunError, match=r"base.*cannot be read back"):
        keep_base(build_tiny(cfg.model, 40, seed=2), base)
    assert (base / "model.safetensors").read_bytes() == b"torn"


@pytest.mark.parametrize("term_at", [5, 7])
def test_a_signal_before_the_last_step_stops_the_run_and_one_during_it_does_not(tmp_path, term_at):
    """SIGTERM during step 5 of 7 stops the run: it says how to resume, exits 143 and its summary names the signal.
    During step 7, the last, the run ends as it would have: exit 0, no resume hint, nothing in its summary, and
    resume=auto passes it over for a run that did stop early."""
    import shutil

    run = tmp_path / "outputs" / "sudoku" / "2026-01-02_00-00-00"
    out = _run(_cmd(tmp_path, run), env={"DGFT_TEST_TERM_AT_STEP": str(term_at)})
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == term_at
    if term_at == 5:
        assert out.returncode == 143 and "resume with" in out.stdout + out.stderr
        assert summary["stopped_by"] == "SIGTERM"
        return
    assert out.returncode == 0 and "resume with" not in out.stdout + out.stderr, out.stderr[-2000:]
    assert summary["stopped_by"] is None and "stopping at step" not in out.stdout + out.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["step"] == 7 and "loss" not in r for r in rows)  # its final held-out check, as without the signal
    unfinished = run.with_name("2026-01-01_00-00-00")  # older, and stopped before its end
    shutil.copytree(run, unfinished)
    shutil.rmtree(unfinished / "checkpoints" / "step-000007")
    (unfinished / "train_summary.json").unlink()
    out = subprocess.run([sys.executable, "-m", "dgft.cli", "train", "resume=auto", "trainer.num_threads=1"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2026-01-01_00-00-00/checkpoints/step-000006 (step 6)" in out.stdout + out.stderr, out.stdout[-2000:]


def test_a_resume_that_fails_in_setup_leaves_the_run_config_and_one_with_nothing_left_keeps_its_loss(tmp_path):
    """A resume records what it changes (more steps, another data cache) only once it trains: a resume whose setup
    fails (here its data cache cannot be made) leaves config.yaml as it was. The data cache may move, since the
    data are made again from the seed. A run stopped between its last checkpoint and its weights is resumed with no
    step to train, and its summary keeps the final loss metrics.jsonl logged."""
    import shutil

    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run)).returncode == 0
    config = (run / "config.yaml").read_text()
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    out = _run(_cmd(tmp_path, run, f"resume={run}", "trainer.max_steps=9", f"task.cache_dir={blocked / 'c'}"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert (run / "config.yaml").read_text() == config
    final = json.loads((run / "train_summary.json").read_text())["final_loss"]
    shutil.rmtree(run / "model")
    (run / "train_summary.json").unlink()
    out = _run(_cmd(tmp_path, run, f"resume={run}", f"task.cache_dir={tmp_path / 'moved'}"))
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 7 and summary["final_loss"] == final is not None


def test_a_run_saved_before_a_config_check_still_resumes(tmp_path):
    """A model from scratch trained without self-conditioning is no longer sampled with it (a config error for a new
    run), but a run saved before that check, whose config asks for it, still resumes: the resume may not change
    the sampler, so refusing it would leave the run stuck."""
    run = tmp_path / "run"
    off = ["noise.self_conditioning_p=0", "sampler.self_conditioning=false", "sampler.passes=1"]
    assert _run(_cmd(tmp_path, run, *off)).returncode == 0
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("self_conditioning: false", "self_conditioning: true"))
    out = _run(_cmd(tmp_path, run, *off[:1], f"resume={run}", "trainer.max_steps=8"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 8


def test_a_resume_on_another_thread_count_says_it_will_not_be_bitwise(tmp_path):
    """Bitwise resumes need the thread count of the session before (sums round otherwise): a resume on another
    count says so."""
    run = tmp_path / "run"
    assert _run(_cmd(tmp_path, run)).returncode == 0
    out = _run([a for a in _cmd(tmp_path, run, f"resume={run}", "trainer.max_steps=8")
                if a != "trainer.num_threads=1"] + ["trainer.num_threads=2"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "note: 2 threads, where the session before ran on 1" in out.stdout + out.stderr


def test_a_second_signal_stops_at_once_and_is_named(tmp_path, monkeypatch, capsys):
    """The first SIGTERM finishes the step and checkpoints; a second one stops at once. It was reported as Ctrl-C,
    exit 130; it is now named (SIGTERM, exit 143, as the shell reports it) with the command that goes on."""
    import dgft.train as T
    from dgft.cli import main

    stop = {"signal": None}
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        T._install_signal_handlers(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop["signal"] == "SIGTERM"
        with pytest.raises(T.StoppedAgain) as again:
            os.kill(os.getpid(), signal.SIGTERM)
        assert again.value.signum == signal.SIGTERM and isinstance(again.value, KeyboardInterrupt)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    run = tmp_path / "run"

    def stopped(cfg, run_dir, overrides=()):
        err = T.StoppedAgain(signal.SIGTERM)
        err.run_dir = run
        raise err

    monkeypatch.setattr(T, "train", stopped)
    with pytest.raises(SystemExit) as err:
        main(["train", f"hydra.run.dir={run}", f"task.cache_dir={tmp_path / 'cache'}"])
    said = capsys.readouterr().err
    assert err.value.code == 143 and "interrupted (SIGTERM), a second time" in said, said
    assert "nothing to resume" in said and "resume=" not in said  # no checkpoint yet
    (run / "checkpoints" / "step-000003").mkdir(parents=True)
    monkeypatch.setattr("dgft.checkpoint.latest_valid", lambda r: r / "checkpoints" / "step-000003")
    with pytest.raises(SystemExit):
        main(["train", f"hydra.run.dir={tmp_path / 'other'}", f"task.cache_dir={tmp_path / 'cache'}"])
    assert f"`dgft train resume={run}` goes on from step-000003" in capsys.readouterr().err
