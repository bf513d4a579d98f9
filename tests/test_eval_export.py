"""`dgft eval EXPORT data=PATH`: an export evaluates as its run does (same answers, same figures), without the
untrained baseline, and its results name the weights they measured and outlive a later export of the run."""

import json

import pytest

from dgft.checkpoint import sha256
from dgft.cli import main

from test_end_to_end import _train

FIGURES = ("n", "exact", "cell_accuracy", "givens_kept", "rule_violations", "mean_steps")


def _eval(where, data, *extra):
    main(["eval", str(where), f"data={data}", "limit=5", "plot=false", "sampler.steps=12", *extra])


def _answers(path):
    return [(r["row"], r["puzzle"], r["answer"]) for r in map(json.loads, path.read_text().splitlines())]


def test_an_export_evaluates_as_its_run_did(tmp_path, capsys):
    run, export = tmp_path / "run", tmp_path / "run" / "export"
    _train(tmp_path, run, "sampler.views=2", "sampler.reprompt=true", "noise.known_in_prompt=true")
    data = run / "data" / "heldout.csv"
    _eval(run, data)
    main(["export", str(run)])
    _eval(export, data)
    theirs = json.loads((run / "eval" / "heldout.json").read_text())
    mine = json.loads((export / "eval" / "heldout.json").read_text())
    assert theirs["baseline"] is True and "baseline_untrained_rules" in theirs  # a run's default
    assert mine["baseline"] is False and "baseline_untrained_rules" not in mine  # an export's
    assert set(mine["modes"]) == set(theirs["modes"]) == {"free", "clamped", "rules"}
    for mode, row in theirs["modes"].items():
        assert {k: mine["modes"][mode][k] for k in FIGURES} == {k: row[k] for k in FIGURES}, mode
    theirs_answers = _answers(run / "eval" / "heldout_samples.jsonl")
    assert _answers(export / "eval" / "heldout_samples.jsonl") == [a for a in theirs_answers
                                                                   if a[0] != "baseline_untrained_rules"]
    assert mine["export"] == {"step": 4, "weights_sha256": {"model.safetensors": sha256(export / "model.safetensors")}}
    assert "export" not in theirs
    assert (export / "eval" / "heldout.md").read_text().count(f"Export {export}, its weights (step 4 of its run)") == 1

    # made again (here: its model card lost), the export keeps its evaluations
    (export / "README.md").unlink()
    main(["export", str(run)])
    assert "exporting again" in capsys.readouterr().out and (export / "README.md").exists()
    assert json.loads((export / "eval" / "heldout.json").read_text()) == mine
    # an evaluation of other weights is not replaced by one of these (each result names its weights)
    mine["export"]["weights_sha256"]["model.safetensors"] = "0" * 64
    (export / "eval" / "heldout.json").write_text(json.dumps(mine))
    with pytest.raises(SystemExit) as err:
        _eval(export, data)
    assert err.value.code == 2 and "export.weights_sha256" in capsys.readouterr().err

    # what an export cannot serve, each named before any weights load
    for option, why in (("baseline=true", "does not carry the model before training"),
                        ("checkpoint=step-000002", "holds one set of weights")):
        with pytest.raises(SystemExit) as err:
            _eval(export, data, option, "name=other")
        assert err.value.code == 2 and why in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["eval", str(export)])
    assert err.value.code == 2 and "carries no held-out split: pass data=PATH" in capsys.readouterr().err
    assert sorted(p.name for p in (export / "eval").iterdir()) == [".heldout.lock", "heldout.json", "heldout.md",
                                                                  "heldout_samples.jsonl"]


def test_a_damaged_export_is_named_and_its_evaluations_survive_a_killed_export(tmp_path, capsys):
    run, export = tmp_path / "run", tmp_path / "run" / "export"
    _train(tmp_path, run)
    main(["export", str(run)])
    data = run / "data" / "heldout.csv"
    weights = export / "model.safetensors"
    good = weights.read_bytes()
    damaged = bytearray(good)
    damaged[-1] ^= 1
    weights.write_bytes(bytes(damaged))  # what export.json recorded is not what would be measured
    with pytest.raises(SystemExit) as err:
        _eval(export, data, "sampler.modes=[rules]")
    assert err.value.code == 2 and "model.safetensors changed since it was recorded" in capsys.readouterr().err
    weights.write_bytes(good[:100])  # truncated, and no record to check against: named, not a traceback
    (export / "export.json").rename(tmp_path / "export.json")
    with pytest.raises(SystemExit) as err:
        _eval(export, data, "sampler.modes=[rules]")
    assert err.value.code == 2 and f"{export}" in capsys.readouterr().err
    weights.write_bytes(good)
    (tmp_path / "export.json").rename(export / "export.json")
    (export / "tokenizer.json").rename(tmp_path / "tokenizer.json")  # AutoTokenizer would load another one
    with pytest.raises(SystemExit) as err:
        _eval(export, data, "sampler.modes=[rules]")
    assert err.value.code == 2 and "incomplete tokenizer" in capsys.readouterr().err
    (tmp_path / "tokenizer.json").rename(export / "tokenizer.json")
    (export / "eval").write_text("not a folder")
    with pytest.raises(SystemExit) as err:
        _eval(export, data, "sampler.modes=[rules]")
    assert err.value.code == 2 and "a file where the evaluations' folder goes" in capsys.readouterr().err
    (export / "eval").unlink()
    (export / "eval" / "puzzles.md").mkdir(parents=True)  # a folder where a result goes: refused before any work
    with pytest.raises(SystemExit) as err:
        _eval(export, data, "sampler.modes=[rules]", "name=puzzles")
    assert err.value.code == 2 and "puzzles.md is a folder where the result goes" in capsys.readouterr().err
    (export / "eval" / "puzzles.md").rmdir()
    _eval(export, data, "sampler.modes=[rules]")

    # an export killed between its swap and the move of the evaluations leaves them in .export.old-PID: the next
    # export moves them over instead of deleting them with the rest
    dead = tmp_path / "run" / ".export.old-999999999"
    dead.mkdir()
    (export / "eval").rename(dead / "eval")
    main(["export", str(run)])
    assert (export / "eval" / "heldout.json").is_file() and not dead.exists()
    # ... but never over evaluations the export already has, nor into an export that is not there
    (dead / "eval").mkdir(parents=True)
    (dead / "eval" / "x.json").write_text("{}")
    before = (export / "eval" / "heldout.json").read_bytes()
    (export / "README.md").unlink()  # so that the export is made again
    main(["export", str(run)])
    assert (export / "eval" / "heldout.json").read_bytes() == before and not (export / "eval" / "x.json").exists()
    assert not dead.exists()
    (dead / "eval").mkdir(parents=True)  # a dead export's leftovers without an export.json, and no export at all
    (export).rename(tmp_path / "was_export")
    main(["export", str(run)])
    assert (export / "model.safetensors").is_file() and not dead.exists()


def test_what_is_neither_a_run_nor_an_export_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as err:
        main(["eval", str(tmp_path / "empty"), "data=x.csv"])
    assert err.value.code == 2 and "neither a run directory (no config.yaml) nor an export" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dgft_sampler.json").write_text(json.dumps({"sampler": {}, "noise": {"kind": "uniform"}, "task": {}}))
    with pytest.raises(SystemExit) as err:
        main(["eval", str(broken), "data=x.csv"])
    assert err.value.code == 2 and "no noise.support, task.name key" in capsys.readouterr().err


def test_an_edited_sampler_file_is_typed_key_by_key(tmp_path, capsys):
    """A hand-edited dgft_sampler.json: a key left out takes its default and is said; a wrong type or an unknown key
    is refused, naming the key, through `dgft eval` as through dgft.solve."""
    from omegaconf import OmegaConf

    from dgft.export import read_export, sampler_settings
    from dgft.runs import RunError
    from tests.conftest import tiny_cfg

    written = sampler_settings(OmegaConf.create(OmegaConf.to_container(tiny_cfg())))
    export = tmp_path / "export"
    export.mkdir()
    file = export / "dgft_sampler.json"

    def edited(section, change):
        settings = json.loads(json.dumps(written))
        change(settings[section])
        file.write_text(json.dumps(settings))

    edited("task", lambda task: task.pop("tokens"))
    capsys.readouterr()
    assert read_export(export).task.tokens == "cell"
    assert "no task.tokens; using the defaults: task.tokens=cell" in capsys.readouterr().err
    edited("sampler", lambda sampler: sampler.update(views="many"))
    with pytest.raises(RunError, match=r"dgft_sampler.json: sampler.views: Value 'many' of type 'str' could not be "
                                       r"converted to Integer \(written by another version of dgft, or edited\?\)$"):
        read_export(export)
    edited("sampler", lambda sampler: sampler.update(viewz=3))
    with pytest.raises(SystemExit) as err:
        main(["eval", str(export), "data=x.csv"])
    assert err.value.code == 2 and "sampler.viewz: Key 'viewz' not in 'SamplerConfig'" in capsys.readouterr().err
    edited("task", lambda task: task.update(name="chess"))
    with pytest.raises(RunError, match="task.name='chess': expected one of sudoku, infill"):
        read_export(export)
