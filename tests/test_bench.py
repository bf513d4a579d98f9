"""bench/profile_step.py on a tiny model: the real recipe step, timed by phase and profiled, on the CPU."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=16", "model.intermediate_size=64", "model.moe_intermediate_size=32"]


def _load(name):
    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_profile_step_recipe(tmp_path, capsys):
    profile_step = _load("profile_step")
    out, trace = tmp_path / "profile.json", tmp_path / "trace.json.gz"
    profile_step.main(["--warmup", "1", "--steps", "2", "--profile-steps", "1", "--out", str(out),
                       "--trace", str(trace), "recipe=sudoku", "device=cpu", "trainer.batch_size=4",
                       f"task.cache_dir={tmp_path / 'cache'}", "task.base_puzzles=12", "task.heldout_puzzles=4",
                       *TINY])
    r = json.loads(out.read_text())
    t = r["timing"]
    assert set(t["synced_ms"]) == {"data", "forward", "backward", "optimizer", "step"}
    assert set(t["issue_ms"]) == {"data", "forward", "backward", "optimizer"}
    assert all(v >= 0 for v in t["synced_ms"].values()) and t["step_ms"] > 0 and t["tokens_per_s"] > 0
    ops = r["profile"]["ops"]
    assert ops and all({"name", "calls", "self_cpu_ms", "self_device_ms"} <= set(o) for o in ops)
    assert any(o["name"].startswith("aten::") for o in ops)
    assert not any(o["name"].startswith("dgft.") for o in ops)  # phase ranges are reported apart
    assert set(r["profile"]["phases_host_ms"]) == {"data", "forward", "backward", "optimizer"}
    assert r["setup"]["recipe"] == "sudoku" and r["setup"]["batch_size"] == 4
    assert trace.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "forward + loss" in printed and "top " in printed


def test_profile_step_bad_arguments_are_one_line(capsys):
    profile_step = _load("profile_step")
    for argv in (["recipe=no_such_recipe"], ["--qlora", "recipe=sudoku"], ["model.hidden_size"]):
        with pytest.raises(SystemExit) as err:
            profile_step.main(argv)
        assert err.value.code == 2
        assert "error:" in capsys.readouterr().err
    # each named, before any measuring: a count that is no number, a file that cannot be written, a bad value's reason
    for argv, said in ((["--steps", "x"], "--steps: 'x': not a whole number"),
                       (["--out", "/proc/dgft-x.json"], "/proc/dgft-x.json: cannot be written"),
                       (["trainer.lr=abc"], "could not be converted to Float")):
        with pytest.raises(SystemExit) as err:
            profile_step.main(argv)
        assert err.value.code == 2 and said in capsys.readouterr().err


def test_solver_states_on_a_tiny_run(tmp_path, capsys):
    """bench/solver_states.py on a 4-step run trained with solver-ordered corruption and planted mistakes: both
    state kinds at each share, figures in [0, 1], as many open cells as asked; the revise figures per share."""
    from dgft.cli import main

    run = tmp_path / "run"
    main(["train", f"hydra.run.dir={run}", f"task.cache_dir={tmp_path / 'cache'}", "task.base_puzzles=12",
          "task.heldout_puzzles=4", "trainer.max_steps=4", "trainer.batch_size=8", "trainer.eval_every=0",
          "task.solver_order_p=0.5", "task.wrong_known_p=0.5", "noise.known_in_prompt=true", *TINY])
    out = tmp_path / "states.json"
    r = _load("solver_states").main([str(run), "--open", "0.8", "0.4", "--draws", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == r and r["puzzles"] == 4
    assert [(row["open_share"], row["state"]) for row in r["rows"]] == [
        (0.8, "random"), (0.8, "solver"), (0.4, "random"), (0.4, "solver")]
    for row in r["rows"]:
        assert 0 <= row["open_accuracy"] <= 1 and 0 <= row["surest_right"] <= 1
    assert [row["open_share"] for row in r["doubt"]] == [0.8, 0.4]
    assert all(0 <= row["caught"] <= 1 and 0 <= row["false_alarms"] <= 1 for row in r["doubt"])
    assert sum(row["states_planted"] for row in r["doubt"]) > 0
    printed = capsys.readouterr().out
    assert "surest open cell right" in printed and "planted cell caught" in printed
    tiny = _load("solver_states").main([str(run), "--open", "0.001", "--draws", "1"])  # no cell opened: n/a, no crash
    assert tiny["rows"][0]["open_accuracy"] is None and "n/a" in capsys.readouterr().out


def test_sample_views_times_both_chunkings_and_finds_the_same_canvases(tmp_path, capsys):
    sample_views = _load("sample_views")
    out = tmp_path / "views.json"
    assert sample_views.main(["--batch", "3", "--views", "3", "--steps", "2", "--repeats", "1", "--view-batch", "1",
                              "2", "0", "--out", str(out), *TINY]) == 0
    r = json.loads(out.read_text())
    assert r["same"] is True and set(r["rows"]) == {"1", "2", "0"}
    assert all(row["s_per_step"] > 0 for row in r["rows"].values()) and r["rows"]["1"]["ratio_to_first"] == 1.0
    assert "same canvases for every view_batch: True" in capsys.readouterr().out


def test_sample_views_bad_arguments_are_one_line(capsys):
    sample_views = _load("sample_views")
    for argv in (["recipe=no_such_recipe"], ["model.hidden_size"], ["--views", "0"]):
        with pytest.raises(SystemExit) as err:
            sample_views.main(argv)
        assert err.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_qlora_benches_step_on_the_tiny_architecture(tmp_path, capsys):
    """bench/qlora_memory.py and profile_step.py --qlora (the GPU session's QLoRA parts) at tiny dimensions on the
    CPU: they once crashed at their first step (a setting the loss reads was missing from their config)."""
    import subprocess

    bench = Path(__file__).resolve().parent.parent / "bench"
    out = tmp_path / "q.json"
    run = subprocess.run([sys.executable, str(bench / "qlora_memory.py"), "--tiny", "--depths", "2", "--steps", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["mode"] for r in rows} == {"nf4", "bf16"} and all(r["loss"] > 0 and r["step_s"] > 0 for r in rows)
    profile_step = _load("profile_step")
    r = profile_step.main(["--qlora", "--tiny", "--warmup", "0", "--steps", "1", "--profile-steps", "0"])
    assert r["timing"]["step_ms"] > 0 and r["setup"]["mode"] == "nf4"


def _bench_sudoku(tmp_path, run, *args, fail="", status=2, write=True):
    """eval/bench_sudoku.sh with a stand-in `python3` on PATH that records each dgft eval it is given (one line of
    arguments), writes a table for it (`write`), and fails with `status` the one whose arguments hold `fail`."""
    import subprocess

    bench, bin_ = tmp_path / "bench", tmp_path / "bin"
    bench.mkdir(exist_ok=True)
    bin_.mkdir(exist_ok=True)
    for f in ("norvig_easy50.csv", "norvig_top95.csv", "d1_4x4_test_sudoku.csv"):
        (bench / f).write_text("x\n")
    log = tmp_path / "calls"
    table = (f'sleep 0.05\nmkdir -p {run}/eval\n'  # newer than the script's stamp, whose time the clock rounds
             f'echo "table $#" > "{run}/eval/t$(wc -l < {log} | tr -d " ").md"\n')
    (bin_ / "python3").write_text(f'#!/bin/sh\necho "$*" >> {log}\n' + (table if write else "")
                                  + (f'case "$*" in *{fail}*) exit {status} ;; esac\n' if fail else ""))
    (bin_ / "python3").chmod(0o755)
    script = Path(__file__).parent.parent / "eval" / "bench_sudoku.sh"
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "BENCH": str(bench)}
    done = subprocess.run(["bash", str(script), str(run), *args], env=env, capture_output=True, text=True)
    return done, log.read_text().splitlines()


def test_bench_sudoku_names_each_evaluation_and_reports_every_table_when_one_fails(tmp_path):
    """`name=X` is one name per evaluation in dgft, so the script gives each set its own (X_norvig_easy50, ...), and
    a refused evaluation (a name in use) no longer stops the others nor hides their tables; it exits 2 naming it."""
    run = tmp_path / "run"
    run.mkdir()
    done, calls = _bench_sudoku(tmp_path, run, "limit=3", "name=quick", fail="norvig_top95")
    assert len(calls) == 4, calls
    names = [next(a for a in c.split() if a.startswith("name=")) for c in calls]
    assert names == ["name=quick_norvig_easy50", "name=quick_norvig_top95", "name=quick_d1_4x4_test_sudoku",
                     "name=quick_heldout"]
    assert all("limit=3" in c and c.count("name=") == 1 for c in calls)
    assert done.returncode == 2 and "not evaluated: norvig_top95" in done.stderr, done.stderr
    assert done.stdout.count("table") == 4  # every table written, the failed one's too


def test_bench_sudoku_stops_at_ctrl_c_and_names_what_failed_when_nothing_ran(tmp_path):
    """dgft eval ends a Ctrl-C with exit 130 (not by the signal): the script stops there, with that status, rather
    than go on to the next set; evaluations all refused before any result folder exists are still named."""
    run = tmp_path / "run"
    run.mkdir()
    done, calls = _bench_sudoku(tmp_path, run, fail="norvig_top95", status=130)
    assert done.returncode == 130 and len(calls) == 2, (done.returncode, calls)
    (tmp_path / "calls").unlink()
    other = tmp_path / "other"
    other.mkdir()
    done, calls = _bench_sudoku(tmp_path, other, fail="dgft", write=False)  # every evaluation refused, no eval/
    assert done.returncode == 2 and len(calls) == 4, done.stderr
    assert "not evaluated: norvig_easy50 norvig_top95 d1_4x4_test_sudoku heldout" in done.stderr, done.stderr


def test_bench_sudoku_on_an_export_skips_the_held_out_split(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "dgft_sampler.json").write_text("{}")
    done, calls = _bench_sudoku(tmp_path, export)
    assert done.returncode == 0, done.stderr
    assert len(calls) == 3 and all("data=" in c and "name=" not in c for c in calls), calls
    assert "carries no held-out split" in done.stderr
