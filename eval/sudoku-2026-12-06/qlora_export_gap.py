"""How far a QLoRA run's export is from the model it trained, merged both ways (session 28).

Trains a tiny one-expert QLoRA run on the CPU (as tests/test_quant.py's last test does), exports it with
merge_into=dequantized (the default) and merge_into=base, and prints each export's max |logit diff| against the
run's own 4-bit model on the export's check batch (export.json's quantization_gap_max_abs_diff).

    python eval/sudoku-2026-12-06/qlora_export_gap.py /tmp/qlora_gap
"""

import json
import sys
from pathlib import Path

from dgft.cli import main

root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/qlora_gap")
run = root / "run"
dims = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=32", "model.intermediate_size=128", "model.moe_intermediate_size=64"]
main(["train", f"hydra.run.dir={run}", f"task.cache_dir={root / 'cache'}", "task.base_puzzles=20",
      "task.heldout_puzzles=6", "trainer.max_steps=3", "trainer.batch_size=8", "trainer.eval_every=0",
      "trainer.log_every=1", "sampler.steps=8", "model.finetune=lora", "model.quantize=nf4", *dims,
      "model.lora.target_experts=true"])
for into in ("dequantized", "base"):
    main(["export", str(run), f"merge_into={into}"])
    record = json.loads((run / "export" / "export.json").read_text())
    print(f"merge_into={into}: export vs the trained 4-bit model, max |logit diff| "
          f"{record['quantization_gap_max_abs_diff']:.4f}; merged vs adapter on the same weights "
          f"{record['merged_max_abs_diff']:.2e}")
