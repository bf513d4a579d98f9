"""The CUDA code paths, opt-in (`pytest -m gpu`; skipped without a CUDA device): `dgft train` with bf16
autocast, fused AdamW, pinned transfers and periodic sampling with a host generator, then `dgft eval`."""

import json

import pytest
import torch

from dgft.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=16", "model.intermediate_size=64", "model.moe_intermediate_size=32"]


def test_train_and_eval_on_cuda(tmp_path):
    run = tmp_path / "run"
    main(["train", "device=cuda", f"hydra.run.dir={run}", f"task.cache_dir={tmp_path / 'cache'}",
          "task.base_puzzles=20", "task.heldout_puzzles=4", "trainer.max_steps=4", "trainer.batch_size=8",
          "trainer.eval_every=2", "trainer.eval_puzzles=2", "trainer.log_every=1", "trainer.time_limit_min=5",
          "sampler.steps=8", *TINY])
    info = json.loads((run / "run.json").read_text())
    assert info["device"].startswith("cuda")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in rows if "loss" in r) and any("9x9_clamped_exact" in r for r in rows)
    puzzles = tmp_path / "p.txt"
    puzzles.write_text("1200000000000021\n")
    main(["eval", str(run), f"data={puzzles}", "device=cuda"])
    result = json.loads((run / "eval" / "p.json").read_text())
    assert result["device"].startswith("cuda") and result["modes"]["rules"]["rule_violations"] == 0
    assert result["modes"]["clamped"]["givens_kept"] == 1.0


def test_lora_dropout_on_cuda_resumes_bitwise(tmp_path):
    """LoRA dropout draws from the CUDA generator, whose state the checkpoint carries: a run killed after its step-2
    checkpoint and resumed ends with the same adapter and losses as one that ran through."""
    import os
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    def cmd(run, *extra):
        return [sys.executable, "-m", "dgft.cli", "train", "device=cuda", f"hydra.run.dir={run}",
                f"task.cache_dir={tmp_path / 'c'}", "task.base_puzzles=20", "task.heldout_puzzles=4",
                "trainer.max_steps=5", "trainer.batch_size=8", "trainer.eval_every=0", "trainer.ckpt_every=2",
                "trainer.log_every=1", "model.finetune=lora", "model.lora.dropout=0.3", "sampler.steps=4", "seed=3",
                *TINY, *extra]

    def run(args, kill=None):
        env = {**os.environ, **({"DGFT_TEST_KILL_AT_STEP": str(kill)} if kill else {})}
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert run(cmd(ref)).returncode == 0
    assert run(cmd(killed), kill=3).returncode == -signal.SIGKILL
    out = run(cmd(tmp_path / "other", f"resume={killed}"))
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (ref, killed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [(r / "metrics.jsonl").read_text().splitlines() for r in (ref, killed)]
    losses = [[json.loads(x).get("loss") for x in lines] for lines in rows]
    assert losses[0] == losses[1]
