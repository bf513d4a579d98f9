"""Command-line mistakes end with a message naming what is wrong, not a traceback."""

import pytest
import torch

from dgft.cli import main


@pytest.mark.parametrize("command", ["eval", "export"])
def test_no_run_given(command, capsys):
    with pytest.raises(SystemExit) as err:
        main([command])
    assert err.value.code == 2
    assert f"dgft {command}: error: no run given: dgft {command} RUN" in capsys.readouterr().err


@pytest.mark.parametrize("name,message", [("cdua", "expected auto, cpu, cuda or cuda:N"),
                                          ("cpu:0", "expected auto, cpu, cuda or cuda:N"),
                                          ("cuda:x", "expected auto, cpu, cuda or cuda:N")])
def test_device_names_are_checked(name, message):
    from dgft.config import ConfigError
    from dgft.train import pick_device

    with pytest.raises(ConfigError, match=message):
        pick_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_device(name):
    from dgft.config import ConfigError
    from dgft.train import pick_device

    with pytest.raises(ConfigError, match=f"device={name}: no CUDA device found"):
        pick_device(name)


def test_eval_names_a_bad_device(tmp_path, capsys):
    """Through the CLI on a run directory: the device is checked before any model loads."""
    from omegaconf import OmegaConf

    from tests.conftest import tiny_cfg

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(tiny_cfg()))
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "device=cdua"])
    assert err.value.code == 2 and "device='cdua': expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["lr=0.01", "it's a=b", "back\\slash'", "plain", "10", "a#b", "${x}"])
def test_a_run_folder_with_grammar_characters_in_its_name_is_the_run(tmp_path, capsys, monkeypatch, name):
    """`dgft eval outputs/sudoku/lr=0.01`: a first argument that names a folder is the run, '=' or quotes and all
    (without the folder, `x=y` stays an override); the run is read (its device checked), not parsed as a key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from dgft.cli import _quote
    from tests.conftest import tiny_cfg

    parsed = OverridesParser.create().parse_override(f"run={_quote(name)}").value()
    assert OmegaConf.create({"run": parsed}).run == name  # as the config reads it back (an escaped "${" unescaped)
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(tiny_cfg()))
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "device=cdua"])
    assert err.value.code == 2 and "device='cdua': expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["eval", "x=y"])  # no folder of that name: an override, which the eval schema does not have
    assert "x: not a setting of dgft" in capsys.readouterr().err



def _train(tmp_path, run, *extra):
    from tests.test_eval_weights import _train as train_tiny

    train_tiny(tmp_path, run, "trainer.max_steps=2", "trainer.ckpt_every=0", *extra)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_damaged_run_directory_is_named(tmp_path, capsys, finetune):
    """A run whose files were damaged (a torn copy, a hand edit): eval and export name the file, no traceback."""
    run = tmp_path / "run"
    _train(tmp_path, run, f"model.finetune={finetune}")
    config = (run / "config.yaml").read_text()
    damage = {"config.yaml": "model: [unclosed\n", "empty config": ""}
    if finetune == "full":
        weights = run / "model" / "model.safetensors"
        damage["weights"] = weights.read_bytes()[:1000]
    else:
        weights = run / "adapter" / "adapter_config.json"
        damage["weights"] = "{bad"
    for what, text in damage.items():
        target = run / "config.yaml" if what != "weights" else weights
        original = target.read_bytes()
        target.write_bytes(text.encode() if isinstance(text, str) else text)
        for command in ("eval", "export"):
            capsys.readouterr()
            with pytest.raises(SystemExit) as err:
                main([command, str(run), "limit=1", "baseline=false", "plot=false"] if command == "eval"
                     else [command, str(run)])
            message = capsys.readouterr().err
            assert err.value.code == 2, (what, command, message[-500:])
            assert str(target if what != "weights" else target.parent) in message, (what, command, message)
            assert "Traceback" not in message
        target.write_bytes(original)
    assert (run / "config.yaml").read_text() == config


def test_a_damaged_checkpoint_names_the_file_and_a_forgotten_data_key_is_suggested(tmp_path, capsys):
    """A truncated checkpoint file is named with its size and the manifest's, not blamed on the manifest; a puzzle
    file given without `data=` gets `data=` suggested."""
    run = tmp_path / "run"
    _train(tmp_path, run, "trainer.ckpt_every=1")
    weights = run / "checkpoints" / "step-000001" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SystemExit):
        main(["eval", str(run), "checkpoint=step-1", "limit=1", "baseline=false", "plot=false"])
    assert f"model.safetensors has 1000 bytes, the record says {size}" in capsys.readouterr().err
    puzzles = tmp_path / "one.txt"
    puzzles.write_text("." * 81 + "\n")
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), str(puzzles)])
    assert err.value.code == 2 and f"did you mean data={puzzles}?" in capsys.readouterr().err


def test_resume_continues_in_place_whatever_hydra_run_dir_says(tmp_path):
    """`dgft train resume=RUN hydra.run.dir=ELSEWHERE` trains RUN and notes that the directory is ignored, leaving
    no stray folder holding Hydra's record of the command (it goes to RUN/.hydra/resume-<time>/)."""
    import subprocess
    import sys

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    _train(tmp_path, run)
    config = (run / "config.yaml").read_text()
    out = subprocess.run([sys.executable, "-m", "dgft.cli", "train", f"resume={run}", "trainer.max_steps=3",
                          f"hydra.run.dir={elsewhere}", "trainer.num_threads=1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"hydra.run.dir={elsewhere} is ignored" in out.stderr and not elsewhere.exists()
    assert list((run / ".hydra").glob("resume-*")) and config != (run / "config.yaml").read_text()


def test_eval_takes_a_thread_count_and_records_it(tmp_path):
    """`dgft eval RUN num_threads=1` (a shared machine); the result records the threads its speeds were measured on."""
    import json

    run = tmp_path / "run"
    _train(tmp_path, run)
    threads = torch.get_num_threads()
    try:
        main(["eval", str(run), "limit=1", "baseline=false", "plot=false", "num_threads=1", "sampler.modes=[rules]"])
        assert json.loads((run / "eval" / "heldout.json").read_text())["environment"]["threads"] == 1
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "num_threads=-1"])
    assert err.value.code == 2


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    return capsys.readouterr().err


def test_no_command_is_an_error_and_help_is_not(capsys):
    assert "dgft: no command given" in _refused([], capsys)
    main(["--help"])
    assert "usage: dgft {train,eval,export}" in capsys.readouterr().out


def test_a_new_run_is_never_written_over_other_files(tmp_path, capsys, monkeypatch):
    """`hydra.run.dir=$UNSET` would train into the working directory; a folder holding other files would have them
    replaced; /proc cannot hold one (root's os.access says it can): each is refused before Hydra writes anything."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert "hydra.run.dir is empty (an unset shell variable?)" in _refused(["train", "hydra.run.dir="], capsys)
    assert "hydra.run.dir is empty" in _refused(["train", "hydra.run.dir=''"], capsys)
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "heldout.csv").write_text("MY DATA")
    (mine / "loss.png").write_text("mine")
    out = _refused(["train", f"hydra.run.dir={mine}"], capsys)
    assert f"hydra.run.dir={mine} holds files that are not a run (data, loss.png)" in out
    assert (mine / "data" / "heldout.csv").read_text() == "MY DATA" and sorted(p.name for p in mine.iterdir()) == [
        "data", "loss.png"]
    assert "cannot create hydra.run.dir=/proc/dgft-x: no directory can be made in /proc" in _refused(
        ["train", "hydra.run.dir=/proc/dgft-x"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.txt"]
    # `outputs` itself, holding other runs, is a directory like any other (it was the marker for "not given")
    (tmp_path / "outputs" / "sudoku").mkdir(parents=True)
    assert "hydra.run.dir=outputs holds files that are not a run (sudoku)" in _refused(
        ["train", "hydra.run.dir=outputs"], capsys)
    # what a run killed in its set-up leaves (Hydra's record, train.log, the lock) does not block the folder
    killed = tmp_path / "killed"
    (killed / ".hydra").mkdir(parents=True)
    (killed / "train.log").write_text("")
    (killed / ".train.lock").write_text("123\n")
    from dgft.cli import _check_new_dir

    _check_new_dir(str(killed), "hydra.run.dir")  # no exit


def test_a_second_sweep_into_one_directory_leaves_the_first_ones_record(tmp_path, capsys):
    """Hydra writes each job's record (.hydra/) before the job starts: a sweep whose job directory holds a run is
    refused before that, so the run's record still says how it was made."""
    sweep = tmp_path / "sw"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / "config.yaml").write_text("seed: 0\n")
    (sweep / "0" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (sweep / "0" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')  # it trained
    out = _refused(["train", "-m", "recipe=sudoku", "seed=1,2", f"hydra.sweep.dir={sweep}"], capsys)
    assert f"{sweep / '0'} holds a run stopped before its first checkpoint (config.yaml, metrics.jsonl), so there is " \
           "nothing to resume" in out and "another hydra.sweep.dir" in out  # with no checkpoint, resume= cannot help
    (sweep / "0" / "checkpoints" / "step-000001").mkdir(parents=True)
    out = _refused(["train", "-m", "recipe=sudoku", "seed=1,2", f"hydra.sweep.dir={sweep}"], capsys)
    assert f"{sweep / '0'} already holds a run (config.yaml, metrics.jsonl, checkpoints); continue it with `dgft " \
           f"train resume={sweep / '0'}`, or give the new run another hydra.sweep.dir" in out
    assert (sweep / "0" / ".hydra" / "config.yaml").read_text() == "seed: 0\n" and not (sweep / "1").exists()
    assert "hydra.sweep.dir is empty" in _refused(["train", "-m", "seed=1,2", "hydra.sweep.dir="], capsys)
    # jobs named by a custom subdir cannot be foreseen: the sweep folder must be new or empty
    out = _refused(["train", "-m", "seed=1,2", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=s${seed}"], capsys)
    assert f"hydra.sweep.dir={sweep} is not empty; with hydra.sweep.subdir set" in out
    assert (sweep / "0" / ".hydra" / "config.yaml").read_text() == "seed: 0\n"
    # one subdir for every job: the first job trained, then the second was refused (naming hydra.run.dir)
    out = _refused(["train", "-m", "seed=1,2", f"hydra.sweep.dir={sweep}_new", "hydra.sweep.subdir=same"], capsys)
    assert "hydra.sweep.subdir=same names one folder for all 2 jobs of the sweep" in out and "no job was started" in out
    assert not (sweep.parent / f"{sweep.name}_new").exists()


@pytest.mark.parametrize("argv, key", [(["eval", "RUN", "data="], "data"), (["eval", "RUN", "name=''"], "name"),
                                       (["eval", "run="], "run"), (["export", "RUN", "out="], "out"),
                                       (["export", "RUN", "checkpoint="], "checkpoint")])
def test_an_empty_value_is_not_taken_for_the_default(argv, key, capsys, tmp_path, monkeypatch):
    """`data=$PUZZLES` with the variable unset would evaluate the held-out split under its name, `out=$DIR` export
    into RUN/export: each is refused, naming the key."""
    monkeypatch.chdir(tmp_path)
    assert f"{key}= is empty (an unset shell variable?)" in _refused(argv, capsys)


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_file_given_as_the_run_is_named_as_a_file(command, capsys, tmp_path):
    puzzles = tmp_path / "puzzles.csv"
    puzzles.write_text("x\n")
    assert f"{puzzles}: a file, not a run directory" in _refused([command, f"run={puzzles}"], capsys)


def test_eval_names_a_noise_kind_it_cannot_sample(tmp_path, capsys):
    """An edited config.yaml's noise.kind would be sampled as uniform noise: named instead, before any model loads."""
    from omegaconf import OmegaConf

    from tests.conftest import tiny_cfg

    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_cfg()
    cfg.noise.kind = "weird"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert "noise.kind='weird' in its config: expected one of uniform, mask" in _refused(["eval", str(run)], capsys)


def test_eval_names_an_isolation_the_sandbox_does_not_have(tmp_path, capsys):
    from omegaconf import OmegaConf

    from tests.conftest import tiny_cfg

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(tiny_cfg()))
    assert "isolation='chroot': expected auto, namespaces or process" in _refused(["eval", str(run),
                                                                                    "isolation=chroot"], capsys)


def test_a_run_that_never_trained_and_a_missing_export_say_what_to_do(tmp_path, capsys):
    """A run killed while it set up holds config.yaml alone: nothing to resume, so the message says to remove it; an
    export folder that is not there is named as missing (not as a folder lacking config.yaml)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    assert "holds a run that has not trained a step" in _refused(["train", "recipe=sudoku", f"hydra.run.dir={run}"],
                                                                 capsys)
    out = _refused(["eval", str(run / "export")], capsys)
    assert f"{run / 'export'}: no such directory (an export: `dgft export RUN` makes it again)" in out


@pytest.mark.parametrize("argv,message", [
    (["train", "recipe=sudoku", "+trainer.lrr=1e-3"], "trainer.lrr: not a setting of dgft; did you mean trainer.lr?"),
    (["train", "recipe=sudoku", "+new.key=1"], "new: not a setting of dgft"),
    (["eval", "RUN", "+sampler.foo=1"], "sampler.foo: not a setting of dgft"),
    (["export", "RUN", "+outt=x"], "outt: not a setting of dgft; did you mean out?")])
def test_a_key_added_with_plus_that_nothing_reads_is_refused(argv, message, tmp_path, capsys):
    """Hydra's answer to `trainer.lrr=1` is "to append use +trainer.lrr=1": the key would be written and never read.
    Refused before anything runs (no run directory made), naming the nearest setting."""
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    if argv[0] == "train":
        argv.append(f"hydra.run.dir={tmp_path / 'new'}")
    else:
        (tmp_path / "run").mkdir()
    assert message in _refused(argv, capsys)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("overrides,message", [(["recipe=infill", "task.heldout_share=0"],
                                                "task.heldout_share=0: trainer.eval_every=")])
def test_periodic_checks_on_fewer_held_out_examples_than_asked_are_refused(overrides, message):
    from dgft.cli import compose_train
    from dgft.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        compose_train(overrides)


@pytest.mark.parametrize("values,message", [("trainer.lr=0.001,abc", "trainer.lr=abc"),
                                            ("device=cpu,cuda", "device=cuda: no CUDA device found")])
def test_a_sweep_job_that_cannot_run_is_refused_before_any_job_trains(values, message, tmp_path, capsys):
    if "cuda" in values and torch.cuda.is_available():
        pytest.skip("a machine with CUDA runs both")
    out = _refused(["train", "-m", "recipe=sudoku", values, f"hydra.sweep.dir={tmp_path / 'sw'}"], capsys)
    assert "sweep job" in out and message in out and "(no job was started)" in out and "Traceback" not in out
    assert not (tmp_path / "sw").exists()


def _recipe(tmp_path, name: str, text: str) -> str:
    (tmp_path / "recipe").mkdir(exist_ok=True)
    (tmp_path / "recipe" / f"{name}.yaml").write_text(text)
    return f"--config-dir={tmp_path}"


@pytest.mark.parametrize("name,text,said", [
    ("broken", "# @package _global_\ndefaults:\n  - /recipe/sudoku\ntrainer: {max_steps: 3\n",
     ["not valid YAML", "broken.yaml\", line 4, column 10"]),
    ("unpackaged", "defaults:\n  - /recipe/sudoku\ntrainer:\n  max_steps: 3\n",
     ["Key 'recipe' not in 'TrainRecipe'", "starts with the line `# @package _global_`"]),
    ("misspelt", "# @package _global_\ndefaults:\n  - override /task: sudoku\ntask:\n  corupt_givens_p: 0.1\n",
     ["corupt_givens_p"]),  # a misspelt task key: no hint about picking another task
])
def test_a_users_recipe_that_does_not_compose_is_named_without_a_traceback(tmp_path, capsys, monkeypatch, name, text,
                                                                          said):
    """A recipe of one's own (--config-dir) with a YAML syntax error, or without `# @package _global_`: one message
    naming the file and line (or the key), exit 2, as every other refusal; Hydra printed the parser's traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # set, Hydra's own reports are kept
    flag = _recipe(tmp_path, name, text)
    for args in (["train", flag, f"recipe={name}", "--cfg", "job"], ["train", flag, f"recipe={name}"]):
        with pytest.raises(SystemExit) as err:
            main(args)
        out = capsys.readouterr()
        assert err.value.code == 2, out.err
        assert "Traceback" not in out.err and out.err.startswith("dgft train: error: "), out.err
        assert all(s in out.err for s in said), out.err
        assert "alone keeps that recipe" not in out.err, out.err
    assert not (tmp_path / "outputs").exists() and "HYDRA_FULL_ERROR" not in __import__("os").environ


@pytest.mark.parametrize("args,said", [
    (["train", "recipe=nosuch"], "Could not find 'recipe/nosuch'"),
    (["train", "trainer.lr=abc"], "could not be converted to Float"),
    (["train", "trainer.lr=[1"], "override trainer.lr=[1: "),
    (["train", "trainer.lrr=1"], "trainer.lrr: not a setting of dgft; did you mean trainer.lr?"),  # not Hydra's
    (["eval", "/tmp", "limitt=3"], "limitt: not a setting of dgft; did you mean limit?"),  # "append with +"
    (["train", "task.sources=x"], "task.sources: a setting of the infill task, not of the task this config trains "
                                  "(for a run of that task, give recipe=infill)"),
    (["train", "+task.sources=x"], "task.sources: a setting of the infill task"),  # refuse_unknown's path
    (["train", "task=infill"], "recipe/sudoku.yaml sets task.corrupt_givens_p for its own task, which the infill "
                               "task does not have: `task=infill` alone keeps that recipe; for a run of the infill "
                               "task, give recipe=infill"),
    (["train", "recipe=infill", "task=sudoku"], "the sudoku task does not have: `task=sudoku` alone keeps that "
                                                "recipe; for a run of the sudoku task, give recipe=sudoku"),
    (["train", "resume=outputs/sudoku/nosuch", "task=infill"], "a resumed run keeps its recipe and task, so train a "
                                                               "new run with recipe=infill"),
    (["train", "-m", "trainer.lrr=1,2"], "sweep job trainer.lrr=1: trainer.lrr: not a setting of dgft; did you "
                                         "mean trainer.lr?"),
    (["train", "-m", "seed=7,8", "--cfg", "job"], "dgft train: error: Only one of --run, --multirun, --cfg"),  # Hydra's
    (["train", "--experimental-rerun", "/nowhere/config.pickle"], "dgft train: error: File /nowhere/config.pickle "
                                                                  "does not exist"),  # ValueErrors: were tracebacks
])
def test_composition_errors_exit_2_with_hydras_words(capsys, monkeypatch, args, said):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as err:
        main(args)
    out = capsys.readouterr()
    assert err.value.code == 2 and said in out.err and "Traceback" not in out.err, out.err


def test_an_error_in_the_command_itself_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """Only composition is turned into a message: an unexpected error once the command runs (a bug) is Hydra's to
    report, with its traceback and exit 1, as before."""
    import omegaconf.errors

    import dgft.train

    def broken(*_):
        raise omegaconf.errors.ConfigKeyError("a bug inside the command")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(dgft.train, "train", broken)
    with pytest.raises(SystemExit) as err:
        main(["train", f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_steps=1"])
    said = capsys.readouterr().err
    assert err.value.code == 1 and "Traceback" in said and "a bug inside the command" in said, said
    assert "dgft train: error" not in said and "HYDRA_FULL_ERROR" not in __import__("os").environ


def test_cfg_job_says_when_training_would_refuse_the_config_it_printed(capsys, monkeypatch):
    """`dgft train --cfg job` printed any config Hydra could compose, a negative learning rate or an unknown `+key`
    included, with exit 0; the config is still printed, then refused as training would refuse it."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as err:
        main(["train", "--cfg", "job", "trainer.lr=-1"])
    out = capsys.readouterr()
    assert err.value.code == 2 and "lr: -1" in out.out, out
    assert "trainer.lr=-1.0: must be > 0 (training would refuse the config printed above)" in out.err
    main(["train", "--cfg", "job", "trainer.max_steps=5"])  # a config training takes: printed, exit 0
    out = capsys.readouterr()
    assert "max_steps: 5" in out.out and out.err == ""


def test_dgfts_own_warnings_print_as_one_line():
    """A torn checkpoint passed over on resume printed as `.../dgft/resume.py:91: UserWarning: ...` and the source
    line; dgft's own notices are `warning: ...` now, other libraries' as Python prints them."""
    import warnings

    from dgft.cli import _format_warning

    from dgft.checkpoint import Notice

    main(["--help"])  # installs it
    assert warnings.formatwarning is _format_warning
    assert _format_warning("step-000020: torn", Notice, "/x/dgft/resume.py", 91) == "warning: step-000020: torn\n"
    other = _format_warning("deprecated", FutureWarning, "/x/transformers/a.py", 3, "x = 1")
    assert other.startswith("/x/transformers/a.py:3: FutureWarning: deprecated")
    torch_said = _format_warning("a torch notice", UserWarning, "/x/dgft/model.py", 3, "x = 1")  # stacklevel into dgft
    assert torch_said.startswith("/x/dgft/model.py:3: UserWarning: a torch notice")


def test_a_value_error_from_dgfts_own_code_before_the_command_keeps_its_traceback(monkeypatch):
    """Hydra's own flag errors are ValueErrors said as one line; one raised by dgft's code (a bug) is not cut short."""
    from dgft.cli import _composed

    def broken():
        raise ValueError("a bug in dgft")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(ValueError, match="a bug in dgft"):
        _composed(broken, "train", {})
