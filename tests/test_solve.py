"""`dgft.solve`: a trained model (its run, or its export) solves puzzle strings with no solution given, and answers
exactly as `dgft eval` did with the listed solutions (the sampler reads the target only at the givens)."""

import json
import shutil

import pytest

from dgft.cli import main
from dgft.config import ConfigError
from dgft.runs import RunError
from dgft.solve import load_solver

from test_end_to_end import _train


def test_a_run_and_its_export_solve_as_eval_did(tmp_path):
    run = tmp_path / "run"
    _train(tmp_path, run, "sampler.views=2", "sampler.reprompt=true", "noise.known_in_prompt=true")
    main(["eval", str(run), "limit=5", "baseline=false", "plot=false", "sampler.steps=12"])
    rows = [json.loads(x) for x in (run / "eval" / "heldout_samples.jsonl").read_text().splitlines()]
    main(["export", str(run)])
    for where in (run, run / "export"):
        solver = load_solver(where, device="cpu")
        for mode in ("free", "clamped", "rules"):
            mine = [x for x in rows if x["row"] == mode]
            puzzles = [x["puzzle"] for x in mine]
            assert solver(puzzles, mode=mode, steps=12) == [x["answer"] for x in mine], (where, mode)
    # the export's model card names the run's evaluation and its code runs as written
    card = (run / "export" / "README.md").read_text()
    assert f"`{run.resolve()}`" in card and "`eval/heldout.json`" in card and "figures hold for it" in card
    code = "\n".join(line[4:] for line in card.splitlines() if line.startswith("    "))
    exec(code.replace("THIS_DIR", str(run / "export")), {})
    with pytest.raises(ConfigError, match="mode='all'"):
        solver(puzzles, mode="all")
    with pytest.raises(ConfigError, match=r"seed=-1: must be in \[0, 2\*\*32\)"):
        solver(puzzles, seed=-1)
    with pytest.raises(ValueError, match="puzzle 1: puzzle has 3 characters"):
        solver([puzzles[0], "123"])
    with pytest.raises(ConfigError, match="'step': not a sampler setting"):  # a typo is not silently dropped
        solver(puzzles, step=3)
    with pytest.raises(ConfigError, match="sampler.steps"):
        solver(puzzles, steps=0)
    with pytest.raises(ConfigError, match="'modes'=\\['clamped'\\]: solve samples one mode per call"):
        solver(puzzles, modes=["clamped"])  # was accepted and not read: rules answers
    with pytest.raises(ValueError, match="puzzles: a list of puzzle strings, not one string"):
        solver(puzzles[0])
    with pytest.raises(TypeError, match="puzzles: a list \\(or any iterable\\) of puzzle strings, not dict"):
        solver({p: 1 for p in puzzles})
    assert solver((p for p in puzzles[:2]), steps=12) == solver(puzzles[:2], steps=12)  # any iterable
    with pytest.raises(TypeError, match="puzzle 1: a string of 16 or 81 characters, not int"):
        solver([puzzles[0], 123])
    clash = "33" + "0" * 14 if len(puzzles[0]) == 16 else "33" + "0" * 79  # what eval refuses, the solver too
    with pytest.raises(ValueError, match="puzzle 0: puzzle givens break a rule: digit 3 repeated in row 1"):
        solver([clash])
    for seed in ("1", 1.5, True):
        with pytest.raises(ConfigError, match="seed=.*: a whole number"):
            solver(puzzles, seed=seed)
    with pytest.raises(ConfigError, match="sampler option steps: Value 'abc'"):
        solver(puzzles, steps="abc")


def test_a_4x4_model_refuses_9x9_puzzles_and_its_card_shows_a_4x4_one(tmp_path, capsys):
    run = tmp_path / "run"
    _train(tmp_path, run, "task.sizes=[4]", "task.size_weights=[1.0]")
    main(["export", str(run)])
    card = (run / "export" / "README.md").read_text()
    assert "3102200002100320" in card and "None recorded" in card
    solver = load_solver(run / "export", device="cpu")
    with pytest.raises(ConfigError, match="puzzle 0 is 9x9, but the model was trained with task.sizes=\\[4\\]"):
        solver(["0" * 81])
    assert len(solver(["3102200002100320"])[0]) == 16
    # an export's files are checked as `dgft eval EXPORT` checks them: an edited sampler file is refused by both,
    # pointing at overrides; changed weights are named (the solver loaded either without a word)
    edited = tmp_path / "edited"
    shutil.copytree(run / "export", edited)
    settings = json.loads((edited / "dgft_sampler.json").read_text())
    settings["sampler"]["steps"] = 3
    (edited / "dgft_sampler.json").write_text(json.dumps(settings, indent=1))
    with pytest.raises(RunError, match=r"dgft_sampler.json changed since .*pass other ones as overrides"):
        load_solver(edited, device="cpu")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["eval", str(edited), "data=" + str(_four_by_four(tmp_path)), "plot=false"])
    said = capsys.readouterr().err
    assert "dgft_sampler.json changed since" in said and "pass other ones as overrides" in said, said
    tampered = tmp_path / "tampered"
    shutil.copytree(run / "export", tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(RunError, match="model.safetensors changed since it was recorded"):
        load_solver(tampered, device="cpu")


def _four_by_four(tmp_path):
    path = tmp_path / "four.csv"
    path.write_text("puzzle\n3102200002100320\n")
    return path


def test_what_is_not_a_model_is_named(tmp_path):
    with pytest.raises(RunError, match=r"neither a run directory \(no config.yaml\) nor an export"):
        load_solver(tmp_path)
