"""The real entry points on a tiny model: dgft train -> eval -> export, through the CLI."""

import json

import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from dgft.cli import main
from dgft.export import check_batch, check_logits
from dgft.model import unwrap
from dgft.runs import load_model
from dgft.tasks.sudoku import grid as G

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=16", "model.intermediate_size=64", "model.moe_intermediate_size=32"]


def _train(tmp_path, run, *extra):
    main(["train", f"hydra.run.dir={run}", f"task.cache_dir={tmp_path / 'cache'}", "task.base_puzzles=20",
          "task.heldout_puzzles=6", "trainer.max_steps=4", "trainer.batch_size=8", "trainer.eval_every=2",
          "trainer.eval_puzzles=3", "trainer.ckpt_every=2", "trainer.log_every=1", "sampler.steps=8", *TINY, *extra])


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_train_eval_export(tmp_path, finetune, capsys):
    run = tmp_path / "run"
    heads = ["model.structured_attention=true"] if finetune == "full" else []  # row and column heads at the start
    _train(tmp_path, run, f"model.finetune={finetune}", "noise.encoder_ar_weight=0.1", *heads)
    for name in ("config.yaml", "tokenizer/tokenizer.json", "metrics.jsonl", "loss.png", "data/heldout.csv",
                 "run.json", "train_summary.json"):
        assert (run / name).exists(), name
    assert (run / ("adapter" if finetune == "lora" else "model")).exists()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("9x9_clamped_exact" in r for r in rows)
    assert all(r["encoder_ar_loss"] > 0 for r in rows if "loss" in r)  # noise.encoder_ar_weight=0.1, logged apart
    trainer = OmegaConf.load(run / "config.yaml").trainer  # step 1 logs its own rate: the warmup's first share
    assert [r["lr"] for r in rows if "lr" in r][0] == pytest.approx(trainer.lr / trainer.warmup_steps)
    assert len(list((run / "checkpoints").glob("step-*"))) == 2  # keep_last

    puzzles = tmp_path / "p.txt"
    puzzles.write_text("1200000000000021\n" + "0" * 81 + "x\n")  # second line is bad
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), f"data={puzzles}", "limit=2"])
    assert err.value.code == 2 and "p.txt:2" in capsys.readouterr().err
    main(["eval", str(run), f"data={puzzles}", "on_error=skip"])
    result = json.loads((run / "eval" / "p.json").read_text())
    assert result["n"] == 1 and result["skipped_lines"] == 1
    assert set(result["modes"]) == {"free", "clamped", "rules"} and "baseline_untrained_rules" in result
    for m in result["modes"].values():
        assert {"n", "exact", "cell_accuracy", "givens_kept", "rule_violations", "mean_steps", "mean_revisions",
                "puzzles_per_s", "tokens_per_s", "by_givens"} <= set(m)
        assert m["mean_revisions"] == 0  # sampler.revise is off by default
    assert result["modes"]["rules"]["rule_violations"] == 0
    step = sorted((run / "checkpoints").glob("step-*"))[-1].name  # named as export names it, not as a path
    main(["eval", str(run), "limit=1", "baseline=false", "plot=false", f"checkpoint={step}", "name=at_ckpt",
          "sampler.modes=[rules]"])
    assert json.loads((run / "eval" / "at_ckpt.json").read_text())["modes"]["rules"]["n"] == 1
    main(["eval", str(run), "limit=4", "baseline=false"])  # the run's own held-out split
    assert (run / "eval" / "heldout.json").exists() and (run / "eval" / "heldout_denoising.png").exists()
    held = json.loads((run / "eval" / "heldout.json").read_text())
    lines = [json.loads(x) for x in (run / "eval" / "heldout_samples.jsonl").read_text().splitlines()]
    assert len(lines) == 4 * 3 and {x["row"] for x in lines} == {"free", "clamped", "rules"}
    for mode, m in held["modes"].items():  # every answer is written, and the file agrees with the summary
        mine = [x for x in lines if x["row"] == mode]
        assert [x["index"] for x in mine] == [0, 1, 2, 3]
        assert sum(x["exact"] for x in mine) / 4 == m["exact"]
        assert all(len(x["answer"]) == len(x["puzzle"]) == len(x["solution"]) for x in mine)
        if mode != "free":  # pinned givens are in every answer
            assert all(a == p for x in mine for a, p in zip(x["answer"], x["puzzle"]) if p != "0")

    if finetune == "full":  # other settings under the same name: refused, naming them, until overwrite=true
        with pytest.raises(SystemExit) as err:
            main(["eval", str(run), "limit=2", "baseline=false", "plot=false"])
        assert err.value.code == 2 and "limit 4 -> 2" in capsys.readouterr().err
        assert json.loads((run / "eval" / "heldout.json").read_text())["n"] == 4
        main(["eval", str(run), "limit=2", "baseline=false", "plot=false", "overwrite=true"])
        assert json.loads((run / "eval" / "heldout.json").read_text())["n"] == 2
        assert not (run / "eval" / "heldout_denoising.png").exists()  # the replaced evaluation's picture
        assert not list((run / "eval").glob(".*tmp*"))

    # the rules answers hold digits: a cell is left empty where the rules leave it none, or where the steps ran out
    # with it still open (a peer took its digit on the last step)
    sampler_steps = OmegaConf.load(run / "config.yaml").sampler.steps
    for x in (x for x in lines if x["row"] == "rules"):
        answer, puzzle = G.from_string(x["answer"]), G.from_string(x["puzzle"])
        assert ((answer > 0) & (puzzle == 0)).sum() >= (puzzle == 0).sum() / 2, x
        if x["steps"] < sampler_steps:
            assert not (G.allowed_digits(answer).any(-1) & (answer == 0)).any(), x

    main(["export", str(run)])
    out = run / "export"
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(out))
    assert model.config.canvas_length == 81
    assert AutoTokenizer.from_pretrained(str(out)).vocab_size > 0
    assert (out / "dgft_sampler.json").exists()
    trained = load_model(run).float()  # the exported model computes what the run's model does, on a fixed batch
    batch = check_batch(unwrap(trained).config)
    assert (check_logits(model, *batch) - check_logits(trained, *batch)).abs().max() <= 1e-4


def test_the_last_step_is_logged_and_checked_and_checks_leave_training_alone(tmp_path):
    """max_steps=5 with log_every=eval_every=2: the loss and the held-out check of step 5 are logged too (they were
    not: the curve and the final weights' check stopped at step 4), and the periodic checks draw no noise from
    training's generator (they did: eval_every changed the trained model)."""
    def rows(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    checked, plain = tmp_path / "checked", tmp_path / "plain"
    _train(tmp_path, checked, "trainer.max_steps=5", "trainer.log_every=2", "trainer.ckpt_every=0")
    _train(tmp_path, plain, "trainer.max_steps=5", "trainer.log_every=2", "trainer.ckpt_every=0",
           "trainer.eval_every=0")
    a, b = rows(checked), rows(plain)
    assert [r["step"] for r in a if "loss" in r] == [1, 2, 4, 5]
    assert [r["step"] for r in a if "9x9_clamped_exact" in r] == [2, 4, 5]
    assert [r["loss"] for r in a if "loss" in r] == [r["loss"] for r in b if "loss" in r]  # to the last bit
    assert all(r["tokens_per_s"] > 0 for r in a if "loss" in r)


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["eval", str(tmp_path / "nope")])
    assert err.value.code == 2 and f"{tmp_path / 'nope'}: no such directory" in capsys.readouterr().err


def test_eval_of_a_run_without_weights_names_the_weights_not_the_data(tmp_path, capsys):
    """A run stopped before it saved anything (config.yaml only): eval said `RUN/data/heldout.csv: file not found`."""
    import shutil

    run = tmp_path / "run"
    _train(tmp_path, run, "trainer.max_steps=1", "trainer.eval_every=0", "trainer.ckpt_every=0")
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "data")
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run)])
    said = capsys.readouterr().err
    assert err.value.code == 2 and "no model weights" in said and "heldout.csv" not in said
    assert "though training ended (train_summary.json); were they moved or deleted?" in said


def test_a_run_stopped_before_its_end_names_its_checkpoints(tmp_path, capsys):
    """A crashed or killed run has checkpoints but no final weights: eval and export said only "did training
    finish?"; they name the last checkpoint now, and checkpoint= it works."""
    import shutil

    run = tmp_path / "run"
    _train(tmp_path, run, "trainer.max_steps=2", "trainer.eval_every=0", "trainer.ckpt_every=1")
    shutil.rmtree(run / "model")
    (run / "train_summary.json").unlink()
    for command in ("eval", "export"):
        with pytest.raises(SystemExit) as err:
            main([command, str(run), *(["limit=1"] if command == "eval" else [])])
        said = capsys.readouterr().err
        assert err.value.code == 2 and "no model weights (config.json): training did not finish" in said
        assert "the last step-000002; pass checkpoint=step-000002" in said and f"resume={run}" in said
    main(["export", str(run), "checkpoint=step-000002"])
    assert (run / "export_step-000002" / "config.json").is_file()
    with open(run / "checkpoints" / "step-000002" / "model.safetensors", "r+b") as torn:
        torn.truncate(100)
    with pytest.raises(SystemExit):
        main(["export", str(run)])
    assert "1 whole checkpoint(s), the last step-000001; pass checkpoint=step-000001" in capsys.readouterr().err


def test_the_denoising_picture_ends_at_its_puzzles_own_last_step(tmp_path, monkeypatch):
    """The batch steps on until its slowest puzzle is done; the picture's puzzle (the batch's first) was shown up to
    the batch's last step (e.g. "step 53" for a puzzle done in 49), its frames after its end all alike."""
    import dgft.plots

    run = tmp_path / "run"
    _train(tmp_path, run, "trainer.eval_every=0")
    puzzles = tmp_path / "p.txt"
    puzzles.write_text("1234341221434320\n1000000000000000\n")  # one blank, then fifteen, in one batch
    shown = {}
    plot = dgft.plots.plot_denoising
    monkeypatch.setattr(dgft.plots, "plot_denoising", lambda frames, *a, **k: (shown.update(frames=frames),
                                                                              plot(frames, *a, **k)))
    main(["eval", str(run), f"data={puzzles}", "baseline=false", "sampler.modes=[rules]",
          "sampler.acceptance=fixed", "sampler.steps=15"])
    steps = [json.loads(line)["steps"] for line in (run / "eval" / "p_samples.jsonl").read_text().splitlines()]
    assert steps[0] == 1 < steps[1]
    assert len(shown["frames"]) == 1


def test_help(capsys):
    main(["--help"])
    assert "train" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the groups' options, without the schemas composition extends
        main(["train", "--help"])
    groups, _, config = capsys.readouterr().out.partition("== Config ==")
    assert "task: infill, sudoku\n" in groups and "recipe: infill, sudoku," in groups and "_schema" not in groups
    assert "lr: 0.003" in config
    for command, option in (("eval", "batch_by=size"), ("export", "atol=")):  # no config groups: not train's
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert f"dgft {command} RUN" in out and option in out and "Configuration groups" not in out
    # every option and sampler override is listed with what it does, from the schema's own comments
    from dgft.config import EvalRecipe, ExportRecipe, SamplerConfig, field_comments

    for command, schemas in (("eval", (EvalRecipe, SamplerConfig)), ("export", (ExportRecipe,))):
        with pytest.raises(SystemExit) as err:
            main([command, "-h"])
        out = " ".join(capsys.readouterr().out.split())
        assert err.value.code == 0
        for schema in schemas:
            prefix = "sampler." if schema is SamplerConfig else ""
            for name, note in field_comments(schema).items():
                if name == "sampler" and schema is EvalRecipe:
                    continue
                assert note, f"{schema.__name__}.{name} has no comment to show in --help"
                assert f"{prefix}{name}" in out and " ".join(note.split()) in out
