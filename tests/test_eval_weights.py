"""Which weights and which reference an evaluation uses: the untrained baseline is the run's own starting model, a
checkpoint of a run that averages its weights is evaluated and exported as that average, a checkpoint's results
never overwrite the final model's, and a partial answer is scored against the solution it heads for."""

import json
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dgft.cli import main
from dgft.runs import RunError, checkpoint_dir, load_base, load_model

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=16", "model.intermediate_size=64", "model.moe_intermediate_size=32"]


def _train(tmp_path, run, *extra):
    main(["train", f"hydra.run.dir={run}", f"task.cache_dir={tmp_path / 'cache'}", "task.base_puzzles=20",
          "task.heldout_puzzles=4", "trainer.max_steps=4", "trainer.batch_size=8", "trainer.eval_every=0",
          "trainer.ckpt_every=2", "trainer.log_every=1", "sampler.steps=8", *TINY, *extra])
    return OmegaConf.load(run / "config.yaml")


def _trained(model, finetune):
    named = dict(model.named_parameters())
    return {k: v.detach().clone() for k, v in named.items() if finetune == "full" or "lora_" in k}


def test_untrained_baseline_is_the_runs_starting_model(tmp_path):
    """A tiny LoRA run saves its starting weights (RUN/base); the baseline built for a full run of the same config
    must be those weights: the run's seed and structured starts, not another random model."""
    from dgft.evaluate import untrained_model

    run = tmp_path / "run"
    cfg = _train(tmp_path, run, "model.finetune=lora", "model.structured_attention=true", "trainer.max_steps=1",
                 "trainer.ckpt_every=0")
    start = load_base(run, cfg).state_dict()
    as_full = OmegaConf.merge(cfg, {"model": {"finetune": "full"}})
    built = untrained_model(as_full, run, "cpu").state_dict()
    assert start.keys() == built.keys()
    assert all(torch.equal(start[k], built[k]) for k in start)
    assert untrained_model(cfg, run, "cpu").state_dict().keys() == start.keys()  # the LoRA run: its base


def test_a_pretrained_runs_baseline_takes_the_trained_models_dtype(monkeypatch, cfg):
    """A pretrained base loads in bf16; a run fine-tuned in fp32 is compared with that base in fp32, so the
    baseline differs by its weights, not by its precision."""
    import dgft.runs
    from dgft.evaluate import untrained_model
    from dgft.model import build_tiny

    monkeypatch.setattr(dgft.runs, "load_base", lambda run, run_cfg, **kw: build_tiny(cfg.model, 64).to(torch.bfloat16))
    pretrained = OmegaConf.merge(cfg, {"model": {"name": "diffusiongemma", "finetune": "full", "quantize": "none"}})
    assert next(untrained_model(pretrained, "run", "cpu").parameters()).dtype == torch.bfloat16
    assert next(untrained_model(pretrained, "run", "cpu", dtype=torch.float32).parameters()).dtype == torch.float32


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_checkpoint_of_an_averaging_run_is_evaluated_as_its_average(tmp_path, finetune):
    """The last checkpoint is written at the last step, so its average is the run's saved model."""
    run = tmp_path / "run"
    cfg = _train(tmp_path, run, f"model.finetune={finetune}", "trainer.ema_decay=0.9")
    last = checkpoint_dir(run, "step-000004")
    final = _trained(load_model(run, cfg), finetune)
    at_ckpt = _trained(load_model(run, cfg, checkpoint=last), finetune)
    assert final.keys() == at_ckpt.keys() and final
    assert all(torch.equal(final[k], at_ckpt[k]) for k in final)
    if finetune == "full":  # and the export of that checkpoint is the same model, and says so
        main(["export", str(run), "checkpoint=step-000004", f"out={tmp_path / 'exp'}"])
        assert json.loads((tmp_path / "exp" / "export.json").read_text())["checkpoint_average"] is True
        from transformers import DiffusionGemmaForBlockDiffusion

        exported = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tmp_path / "exp")).state_dict()
        saved = load_model(run, cfg).state_dict()
        assert all(torch.allclose(exported[k].float(), saved[k].float()) for k in saved)
        from dgft.export import source_hashes  # the average comes from the trainer state: a change is a new source

        assert "checkpoints/step-000004/trainer_state.pt" in source_hashes(run, cfg, last)
        assert "checkpoints/step-000004/trainer_state.pt" not in source_hashes(
            run, OmegaConf.merge(cfg, {"trainer": {"ema_decay": 0.0}}), last)


def test_streaming_export_of_an_averaging_checkpoint_is_refused(tmp_path):
    """The 4-bit run's export merges the adapter file; a checkpoint's file is not the average, so it is refused."""
    from dgft.export import export

    run = tmp_path / "run"
    _train(tmp_path, run, "model.finetune=lora", "model.quantize=nf4", "trainer.ema_decay=0.9")
    cfg = OmegaConf.create({"run": str(run), "out": str(tmp_path / "exp"), "checkpoint": "step-000004",
                            "device": "cpu", "atol": 1e-4, "max_check_gb": 1.0})
    with pytest.raises(RunError, match="moving average"):
        export(cfg)
    assert not (tmp_path / "exp").exists()


def test_a_checkpoints_results_keep_their_own_name_and_record_it(tmp_path):
    run = tmp_path / "run"
    _train(tmp_path, run)
    main(["eval", str(run), "limit=2", "plot=false", "sampler.modes=[rules]"])
    final = json.loads((run / "eval" / "heldout.json").read_text())
    assert final["checkpoint"] is None and final["limit"] == 2 and final["baseline"] is True
    main(["eval", str(run), "limit=1", "baseline=false", "plot=false", "checkpoint=step-000002", "seed=5",
          "sampler.modes=[rules]"])
    assert json.loads((run / "eval" / "heldout.json").read_text()) == final  # not overwritten
    at = json.loads((run / "eval" / "heldout_step-000002.json").read_text())
    assert at["checkpoint"].endswith("step-000002") and at["seed"] == 5 and at["limit"] == 1
    assert at["baseline"] is False and "baseline_untrained_rules" not in at
    assert (run / "eval" / "heldout_step-000002_samples.jsonl").exists()
    md = (run / "eval" / "heldout_step-000002.md").read_text()
    assert "checkpoint " in md and "step-000002" in md and "seed 5" in md and "the first 1 " in md
    # the same evaluation typed from another folder (its checkpoint path is relative to where it ran): a repeat,
    # not "other settings"; and a name that would hide the result files is refused
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        main(["eval", str(run.resolve()), "limit=1", "baseline=false", "plot=false", "checkpoint=step-2", "seed=5",
              "sampler.modes=[rules]"])
        with pytest.raises(SystemExit) as err:
            main(["eval", str(run.resolve()), "limit=1", "name=.json"])
        assert err.value.code == 2
    finally:
        os.chdir(cwd)


def test_checkpoints_by_number_and_runs_through_a_link(tmp_path, monkeypatch, capsys):
    """`checkpoint=step-2` (or `2`) finds step-000002, a missing one lists those the run keeps; an evaluation
    through the `latest` link records the run it reached, not the link (which moves with the next training)."""
    run = tmp_path / "runs" / "2026-01-01_00-00-00"
    _train(tmp_path, run)
    assert checkpoint_dir(run, "step-2").name == checkpoint_dir(run, "2").name == "step-000002"
    with pytest.raises(RunError, match=r"checkpoint=step-3: no such directory .*holds step-000002, step-000004"):
        checkpoint_dir(run, "step-3")
    assert (tmp_path / "runs" / "latest").is_symlink()  # made by `dgft train`
    monkeypatch.chdir(tmp_path)
    main(["eval", "runs/latest", "limit=1", "baseline=false", "plot=false", "sampler.modes=[rules]", "name=via"])
    assert json.loads((run / "eval" / "via.json").read_text())["run"] == "runs/2026-01-01_00-00-00"


def test_batches_of_one_number_of_givens_time_each_number(tmp_path, monkeypatch):
    """`batch_by=givens`: every sampling batch holds puzzles of one size and one number of givens, so each number's
    puzzles/s and tokens/s are measured (the issue's breakdown by givens), shown in the .md and recorded in the
    settings; the default batches by size, as before, and splits no speed."""
    import dgft.tasks.sudoku.evaluate as E
    from dgft.tasks.sudoku import grid as G

    run = tmp_path / "run"
    _train(tmp_path, run)
    sol = G.solve(G.from_string("1200340000000000"), limit=1)[0]
    lines = ["puzzle,solution"]
    for blanks in ([0, 5], [0, 5, 10], [3, 6], [3, 6, 9], [1, 4, 11]):  # 14, 13, 14, 13 and 13 givens
        p = sol.copy()
        p[blanks] = 0
        lines.append(f"{G.to_string(p)},{G.to_string(sol)}")
    data = tmp_path / "p.csv"
    data.write_text("\n".join(lines) + "\n")
    seen = []
    real = E.sample
    monkeypatch.setattr(E, "sample", lambda model, batch, *a, **k: seen.append(
        sorted(set(batch["fixed"].sum(-1).tolist()))) or real(model, batch, *a, **k))
    common = ["eval", str(run), f"data={data}", "plot=false", "sampler.modes=[rules]", "baseline=false"]
    main([*common, "batch_by=givens", "name=g"])
    assert seen[1:] == [[14], [13]]  # after the warm-up: a batch per number of givens, in order of first appearance
    out = json.loads((run / "eval" / "g.json").read_text())
    groups = out["modes"]["rules"]["by_givens"]
    assert list(groups) == ["4x4/13", "4x4/14"] and out["batch_by"] == "givens"
    assert all(g["puzzles_per_s"] > 0 and g["tokens_per_s"] == 16 * g["puzzles_per_s"] for g in groups.values())
    md = (run / "eval" / "g.md").read_text()
    assert "batched by number of givens" in md and "| 4x4/13 | 3 | " in md
    seen.clear()
    main([*common, "name=s"])
    assert seen[1:] == [[13, 14]]
    out = json.loads((run / "eval" / "s.json").read_text())
    assert "batch_by" not in out and "puzzles_per_s" not in out["modes"]["rules"]["by_givens"]["4x4/13"]


# --- scores against the solution the answer heads for, and per group ---------------------------------------
def test_a_partial_answer_is_scored_against_the_solution_it_follows():
    """d1's 4x4 puzzles can have several solutions: one blank short of a valid completion that is not the listed
    one, an answer has all its filled cells right."""
    from dgft.metrics import score_answer
    from dgft.tasks.sudoku import grid as G

    puzzle = G.from_string("1200340000000000")
    solutions = G.solve(puzzle, limit=10)
    assert len(solutions) > 1
    listed, other = solutions[0], solutions[1]
    answer = other.copy()
    blank = int(np.flatnonzero((puzzle == 0) & (listed != other))[0])  # a cell where the two differ
    answer[blank] = 0
    s = score_answer(puzzle, listed, answer)
    assert not s["exact"] and s["blanks_right"] == s["blanks"] - 1
    assert score_answer(puzzle, listed, other)["blanks_right"] == s["blanks"]  # complete and valid: all right
    wrong = listed.copy()
    wrong[blank] = 0
    assert score_answer(puzzle, listed, wrong)["blanks_right"] == s["blanks"] - 1  # the listed one still counts


def test_breakdowns_group_scores_and_steps_by_givens_and_difficulty():
    from dgft.tasks.sudoku import grid as G
    from dgft.tasks.sudoku.evaluate import breakdowns
    from dgft.tasks.sudoku.io import SudokuRecord

    sol = G.solve(G.from_string("1200340000000000"), limit=1)[0]
    p1 = sol.copy()
    p1[[2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]] = 0  # 4 givens
    p2 = sol.copy()
    p2[[3, 7, 11, 15]] = 0  # 12 givens
    recs = [SudokuRecord(p1, sol, "a"), SudokuRecord(p2, sol, "b"), SudokuRecord(p2.copy(), sol, "c")]
    wrong = sol.copy()
    wrong[3] = 0
    out = breakdowns(recs, [sol, sol, wrong], {"steps": np.array([12.0, 4.0, 2.0])}, ["harder", "singles", "singles"])
    assert list(out["by_givens"]) == ["4x4/4", "4x4/12"]  # numeric order, not "12" < "4"
    assert out["by_givens"]["4x4/12"]["n"] == 2 and out["by_givens"]["4x4/12"]["exact"] == 0.5
    assert out["by_givens"]["4x4/12"]["cell_accuracy"] == 7 / 8 and out["by_givens"]["4x4/12"]["mean_steps"] == 3.0
    assert out["by_difficulty"]["4x4/harder"] == {**out["by_givens"]["4x4/4"]}
    assert out["by_difficulty"]["4x4/singles"]["mean_steps"] == 3.0


def test_an_answer_that_changes_a_given_or_breaks_a_rule_is_scored_so():
    """Scores against bad answers, not only good ones: a valid grid that overwrites a given is not exact and keeps
    fewer givens; a duplicated digit counts as a rule violation."""
    from dgft.metrics import score_answer
    from dgft.tasks.sudoku import grid as G

    puzzle = G.from_string("1200340000000000")
    solutions = G.solve(np.zeros(16, dtype=int), limit=300)
    other = next(s for s in solutions if s[0] != 1)  # a valid completed grid that does not keep the given 1
    s = score_answer(puzzle, G.solve(puzzle, limit=1)[0], other)
    assert s["exact"] is False and s["givens_kept"] < 1.0 and s["rule_violations"] == 0
    broken = G.solve(puzzle, limit=1)[0].copy()
    broken[15] = broken[14]  # two equal digits in the last row
    s = score_answer(puzzle, G.solve(puzzle, limit=1)[0], broken)
    assert s["exact"] is False and s["rule_violations"] > 0 and s["givens_kept"] == 1.0


def test_puzzles_without_blanks_have_no_cell_accuracy():
    """A fully given puzzle (puzzle files may hold one) leaves no blank cell to score: cell_accuracy is None, not
    0.0 beside an exact 1.0, in `aggregate`, the evaluate module, the per-givens breakdown and the markdown table."""
    from dgft.metrics import SudokuAccuracy, aggregate, score_answer
    from dgft.tasks.sudoku import grid as G
    from dgft.tasks.sudoku.evaluate import breakdowns, markdown, summarise
    from dgft.tasks.sudoku.io import SudokuRecord

    sol = G.solve(G.from_string("1200340000000000"), limit=1)[0]
    full = aggregate([score_answer(sol, sol, sol)])
    assert full["exact"] == 1.0 and full["cell_accuracy"] is None
    assert aggregate([])["cell_accuracy"] is None
    text = G.to_string(sol)
    assert SudokuAccuracy().compute(predictions=[text], references=[text], puzzles=[text])["cell_accuracy"] is None
    part = sol.copy()
    part[[3, 7]] = 0
    assert aggregate([score_answer(sol, sol, sol), score_answer(part, sol, sol)])["cell_accuracy"] == 1.0

    recs = [SudokuRecord(sol.copy(), sol, "a"), SudokuRecord(part, sol, "b")]
    stats = {"steps": np.array([0.0, 2.0]), "revisions": np.zeros(2), "seconds": 1.0, "cells": 32}
    out = breakdowns(recs, [sol, sol], stats, ["singles", "singles"])
    assert out["by_givens"]["4x4/16"]["cell_accuracy"] is None and out["by_givens"]["4x4/14"]["cell_accuracy"] == 1.0
    only_full = {**summarise(recs[:1], [sol], {**stats, "steps": np.zeros(1), "revisions": np.zeros(1)}),
                 **breakdowns(recs[:1], [sol], stats, ["singles"])}
    assert only_full["cell_accuracy"] is None
    table = markdown("full", {"n": 1, "skipped_lines": 0, "data": "full.csv", "modes": {"rules": only_full}})
    assert "| rules | 1 | 100.0% | n/a | 100.0% |" in table
    json.dumps(only_full)  # null in the result file


def test_rule_violations_and_givens_kept_are_means_over_puzzles():
    from dgft.metrics import aggregate, score_answer
    from dgft.tasks.sudoku import grid as G

    puzzle = G.from_string("1200340000000000")
    sol = G.solve(puzzle, limit=1)[0]
    broken = sol.copy()
    broken[[0, 1]] = sol[[1, 0]]  # two givens swapped: both lost, the row still a permutation
    broken[15] = broken[14]  # and two equal digits in the last row
    one = score_answer(puzzle, sol, broken)
    assert one["rule_violations"] > 0 and one["givens_kept"] == 0.5
    out = aggregate([score_answer(puzzle, sol, sol), one, score_answer(puzzle, sol, sol)])
    assert out["rule_violations"] == pytest.approx(one["rule_violations"] / 3)
    assert out["givens_kept"] == pytest.approx(2.5 / 3) and out["exact"] == pytest.approx(2 / 3)


def test_givens_kept_leaves_out_puzzles_without_givens():
    """An empty grid has no givens to keep: it counted as 1.0 in the mean, raising the figure with nothing tested.
    It is left out of the mean now, and a set of empty grids only has givens_kept None ("n/a" in the table)."""
    from dgft.metrics import aggregate, score_answer
    from dgft.tasks.sudoku import grid as G
    from dgft.tasks.sudoku.evaluate import markdown

    puzzle = G.from_string("1200340000000000")
    sol = G.solve(puzzle, limit=1)[0]
    lost = sol.copy()
    lost[[0, 1]] = sol[[1, 0]]  # two of its four givens lost
    empty = np.zeros_like(puzzle)
    assert score_answer(empty, sol, sol)["givens_kept"] is None
    out = aggregate([score_answer(puzzle, sol, lost), score_answer(empty, sol, sol)])
    assert out["givens_kept"] == 0.5 and out["n"] == 2 and out["exact"] == 0.5  # it was (0.5 + 1.0) / 2
    only_empty = {**aggregate([score_answer(empty, sol, sol)]), "mean_steps": 16.0, "puzzles_per_s": 1.0,
                  "tokens_per_s": 16.0}
    assert only_empty["givens_kept"] is None and aggregate([])["givens_kept"] is None
    table = markdown("empty", {"n": 1, "skipped_lines": 0, "data": "empty.csv", "modes": {"free": only_empty}})
    assert "| free | 1 | 100.0% | 100.0% | n/a |" in table


def test_the_metric_scores_a_malformed_prediction_as_wrong():
    """A prediction that is not a grid of the puzzle's size (cut model text, a stray character) is an empty answer,
    counted in `malformed`; it aborted the whole `compute` without saying which. A bad puzzle names its index."""
    from dgft.metrics import SudokuAccuracy
    from dgft.tasks.sudoku import grid as G

    puzzle = "1200340000000000"
    text = G.to_string(G.solve(G.from_string(puzzle), limit=1)[0])
    out = SudokuAccuracy().compute(predictions=[text, text[:15], "x" * 16, text + "1" * 65],
                                   references=[text] * 4, puzzles=[puzzle] * 4)
    assert out["n"] == 4 and out["exact"] == 0.25 and out["malformed"] == 3
    assert out["cell_accuracy"] == 0.25 and out["givens_kept"] == 0.25 and out["rule_violations"] == 0.0
    with pytest.raises(ValueError, match="example 1: puzzle has 15 characters"):
        SudokuAccuracy().compute(predictions=[text] * 2, references=[text] * 2, puzzles=[puzzle, puzzle[:15]])


def test_puzzles_of_a_size_the_run_did_not_train_on_are_refused(tmp_path):
    from dgft.config import ConfigError
    from dgft.tasks.sudoku.evaluate import check_sizes
    from dgft.tasks.sudoku.io import read_puzzles

    data = tmp_path / "mixed.txt"
    data.write_text("003020600900305001001806400008102900700000008006708200002609500800203009005010300\n"
                    "3102200002100320\n3102200002100320\n")
    recs, _ = read_puzzles(data)
    with pytest.raises(ConfigError, match=r"mixed\.txt: 2 4x4 puzzles \(the first at .*mixed\.txt:2\), but the run "
                                          r"was trained with task\.sizes=\[9\]"):
        check_sizes(recs, [9], data)
    check_sizes(recs, [9, 4], data)
    check_sizes(recs[:1], [9], data)
    check_sizes(recs, None, data)  # a config saved before task.sizes existed


def test_a_result_names_its_settings_and_is_not_replaced_by_other_ones(tmp_path):
    """The .md names the sampler settings that change results; RUN/eval/<name>.json made with other settings is
    not replaced unless asked (the same settings again are a re-run and replace it), and the refusal names them."""
    from dgft.config import ConfigError
    from dgft.cache import replace_file
    from dgft.evaluate import claim_output, provenance_line

    sampler = {"steps": 8, "views": 16, "fill_forced": True, "revise": 0.0, "reprompt": True}
    line = provenance_line({"run": "r", "sampler": sampler, "seed": 0, "limit": 0})
    assert all(f"{k}={v}" in line for k, v in sampler.items())
    for rule, key in (("confidence", "confidence"), ("entropy", "entropy_bound")):  # the acceptance rule's threshold
        both = {**sampler, "acceptance": rule, "confidence": 0.5, "entropy_bound": 0.2}
        line = provenance_line({"run": "r", "sampler": both, "seed": 0, "limit": 0})
        assert f"acceptance={rule}, {key}={both[key]}" in line and line.count("0.5") + line.count("0.2") == 1
    settings = {"data": "p.csv", "seed": 0, "limit": 0, "sampler": sampler}
    replace_file(tmp_path / "p.json", json.dumps(settings))
    claim_output(tmp_path, "p", settings, overwrite=False)  # a re-run
    claim_output(tmp_path, "q", {**settings, "seed": 1}, overwrite=False)  # another name
    other = {**settings, "limit": 5, "sampler": {**sampler, "fill_forced": False}}
    with pytest.raises(ConfigError, match=r"p\.json holds an evaluation with other settings \(limit 0 -> 5; "
                                          r"sampler\.fill_forced True -> False\): name=OTHER keeps both"):
        claim_output(tmp_path, "p", other, overwrite=False)
    claim_output(tmp_path, "p", other, overwrite=True)
    assert [f.name for f in tmp_path.iterdir()] == ["p.json"]  # no temporary left
    # a record made before a sampler setting existed (or from an export's file without it): the key is its default
    replace_file(tmp_path / "p.json", json.dumps(other))
    claim_output(tmp_path, "p", {**other, "sampler": {**other["sampler"], "passes": 1}}, overwrite=False)
    with pytest.raises(ConfigError, match=r"sampler\.passes None -> 2\)"):
        claim_output(tmp_path, "p", {**other, "sampler": {**other["sampler"], "passes": 2}}, overwrite=False)


def test_the_same_data_file_typed_from_elsewhere_is_a_re_run(tmp_path, monkeypatch):
    """`dgft eval RUN` from another folder types the held-out split's path otherwise ("run/data/heldout.csv" against
    "/abs/run/data/heldout.csv"): the same file, so a re-run, not "an evaluation with other settings". Another file
    with other content still is."""
    from dgft.cache import replace_file
    from dgft.checkpoint import sha256
    from dgft.config import ConfigError
    from dgft.evaluate import claim_output

    data = tmp_path / "run" / "data" / "heldout.csv"
    data.parent.mkdir(parents=True)
    data.write_text("puzzle\n" + "1" * 16 + "\n")
    monkeypatch.chdir(tmp_path)
    before = {"data": "run/data/heldout.csv", "seed": 0, "data_path": str(data.resolve()), "data_sha256": sha256(data)}
    replace_file(tmp_path / "p.json", json.dumps(before))
    claim_output(tmp_path, "p", {"data": str(data), "seed": 0}, overwrite=False)
    copy = tmp_path / "copy.csv"  # the same content elsewhere: the same data
    copy.write_bytes(data.read_bytes())
    claim_output(tmp_path, "p", {"data": str(copy), "seed": 0}, overwrite=False)
    copy.write_text("puzzle\n" + "2" * 16 + "\n")
    with pytest.raises(ConfigError, match="other settings \\(data 'run/data/heldout.csv' -> "):
        claim_output(tmp_path, "p", {"data": str(copy), "seed": 0}, overwrite=False)
    # the same path with other content (the file edited since): the earlier result measured other puzzles, and a
    # re-run would replace it without a word
    data.write_text("puzzle\n" + "3" * 16 + "\n")
    for typed in ("run/data/heldout.csv", str(data)):
        with pytest.raises(ConfigError, match=r"other settings \(the content of .*heldout.csv: sha256 "
                                              + before["data_sha256"][:12]):
            claim_output(tmp_path, "p", {"data": typed, "seed": 0}, overwrite=False)
    # the same relative path typed from another folder names another file: said as such
    other = tmp_path / "elsewhere" / "run" / "data" / "heldout.csv"
    other.parent.mkdir(parents=True)
    other.write_text("puzzle\n" + "4" * 16 + "\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"data run/data/heldout.csv is .*elsewhere.*, the result measured "):
        claim_output(tmp_path, "p", {"data": "run/data/heldout.csv", "seed": 0}, overwrite=False)
    # a result edited by hand (a number for its data_sha256) is replaced, as any unreadable one is
    replace_file(tmp_path / "p.json", json.dumps({**before, "data_sha256": 5}))
    claim_output(tmp_path, "p", {"data": "run/data/heldout.csv", "seed": 0}, overwrite=False)


def test_an_evaluation_holds_its_name_and_writes_its_files_whole_or_not_at_all(tmp_path, monkeypatch):
    """Two `dgft eval` of one name at once left one's answers under the other's settings: the second is refused,
    naming the first. A full disk while writing left no result at all (the old one removed first): it is said, and
    the result that was there stays whole, with no temporary beside it."""
    import errno
    import os

    from dgft.evaluate import claim_output, hold_result, write_result
    from dgft.runs import RunError

    out, settings = tmp_path / "eval", {"data": "p.csv", "seed": 0}
    claim = hold_result(out, "p", settings, overwrite=False)  # makes eval/, and holds eval/<name> for this one
    for check in (claim_output, hold_result):  # said before the model loads, and when taking it
        with pytest.raises(RunError, match=rf"another `dgft eval` \(pid {os.getpid()}\) is writing this result "
                                           "now; wait for it to end, or give this one another name="):
            check(out, "p", settings, overwrite=False)
    hold_result(out, "q", settings, overwrite=False).close()  # another name is another result
    files = lambda json_text: {out / "p_samples.jsonl": "a\n", out / "p.md": "md\n", out / "p.json": json_text}  # noqa: E731
    write_result(claim, out, "p", files(json.dumps(settings)))
    claim = hold_result(out, "p", settings, overwrite=False)  # let go once written: a re-run takes it

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunError, match=r"could not write the result p \(No space left on device\); the one that was "
                                       "there is as it was"):
        write_result(claim, out, "p", {out / "p_samples.jsonl": "b\n", out / "p.md": "other\n", out / "p.json": full})
    assert (out / "p_samples.jsonl").read_text() == "a\n" and (out / "p.md").read_text() == "md\n"
    assert json.loads((out / "p.json").read_text()) == settings
    assert sorted(f.name for f in out.iterdir()) == [".p.lock", ".q.lock", "p.json", "p.md", "p_samples.jsonl"]
    hold_result(out, "p", settings, overwrite=False).close()  # the failed writing let go of it too


def test_a_results_folder_that_cannot_be_written_is_refused_before_anything_is_sampled(tmp_path, monkeypatch):
    import dgft.evaluate as E
    import dgft.runs
    from dgft.runs import RunError

    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dgft.runs, "open", denied, raising=False)  # read-only for root too, which chmod is not
    with pytest.raises(RunError, match=r"eval: the results cannot be written there \(Permission denied\); nothing was "
                                       "evaluated"):
        E.hold_result(tmp_path / "eval", "p", {}, overwrite=False)
    monkeypatch.undo()
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RunError, match=r"link: a link to .*nowhere, which does not exist"):
        E.claim_output(tmp_path / "link", "p", {}, overwrite=False)


def test_a_run_being_trained_is_not_evaluated_or_exported_from_its_final_weights(tmp_path):
    """While a `dgft train` holds the run (its final weights and their record not whole yet), eval and export of
    its final weights say so, naming the process, rather than reading half-written ones or advising a resume."""
    import os

    from dgft import runs

    run = tmp_path / "run"
    run.mkdir()
    cfg = OmegaConf.create({"model": {"finetune": "full"}})
    with runs.writing(run):
        assert runs.training_now(run) == str(os.getpid())
        with pytest.raises(runs.RunError, match=rf"a `dgft train` \(pid {os.getpid()}\) is writing this run now; "
                                                r".*checkpoint=step-N"):
            runs.require_final(run, cfg)
    assert runs.training_now(run) is None and runs.require_final(run, cfg) == run / "model"


def test_a_checkpoint_removed_since_the_command_began_is_named(tmp_path):
    """`checkpoint=step-N` of a run still training, pruned between eval's check and its load: named as gone, not
    "no model weights; did training finish?" (or, for an averaging run, a FileNotFoundError traceback)."""
    from dgft.runs import RunError, require_weights

    gone = tmp_path / "checkpoints" / "step-000020"
    with pytest.raises(RunError, match=r"step-000020: no longer there \(a training still running keeps only its last "
                                       r"trainer\.keep_last checkpoints\)"):
        require_weights(tmp_path, OmegaConf.create({"model": {"finetune": "full"}}), gone)
