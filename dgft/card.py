"""An export's README.md (its model card): where the weights came from, how to load and sample them, and what the
run's evaluations measured, each figure with the file it is read from.

`model_card(run_dir, rcfg, checkpoint, step)` -> the text; `dgft.export` writes it into every export.
"""

from __future__ import annotations

import json
from pathlib import Path

PUZZLE = "003020600900305001001806400008102900700000008006708200002609500800203009005010300"  # Norvig's first


def model_card(run_dir: Path, rcfg, checkpoint: Path | None, step: int | None) -> str:
    run = _read_json(run_dir / "run.json") or {}
    weights = f"checkpoint `{checkpoint.name}`" if checkpoint else "its final weights"
    made = ", ".join(x for x in (f"dgft {run['dgft']}" if run.get("dgft") else "",
                                 f"commit {run['dgft_commit'][:12]}" if run.get("dgft_commit") else "",
                                 f"trained on {run['cpu']}" if run.get("cpu") else "",
                                 f"GPU {run['gpu']}" if run.get("gpu") else "") if x)
    quantized = rcfg.model.get("quantize", "none") == "nf4"
    lines = [f"# {rcfg.name}: a DiffusionGemmaForBlockDiffusion exported by dgft", "",
             f"From the run `{run_dir}` ({weights}, step {step}): recipe `{rcfg.name}`, model `{rcfg.model.name}`, "
             f"{rcfg.model.finetune} fine-tuning{' on a 4-bit base' if quantized else ''}, noise "
             f"`{rcfg.noise.kind}`, seed {rcfg.get('seed')}" + (f"; {made}" if made else "") + ".", "",
             "## Load and sample", "",
             "    from transformers import DiffusionGemmaForBlockDiffusion",
             '    model = DiffusionGemmaForBlockDiffusion.from_pretrained("THIS_DIR")', "",
             "transformers' `generate()` renoises any canvas it is given, so it cannot keep what must not change. dgft's "
             "sampler pins it, with the settings this model was trained for (`dgft_sampler.json`: the sampler, the "
             "noise and the task's layout)."]
    if rcfg.task.name == "sudoku" and rcfg.task.get("tokens", "cell") != "text":
        lines += ["", "    from dgft.solve import load_solver",
                  f'    load_solver("THIS_DIR")(["{PUZZLE}"], mode="rules")   # answers as strings', ""]
    lines += ["", "## The run's evaluations", ""]
    lines += _evaluations(run_dir, checkpoint, quantized)
    return "\n".join(lines).rstrip() + "\n"


def _evaluations(run_dir: Path, checkpoint: Path | None, quantized: bool) -> list[str]:
    rows = []
    for path in sorted((run_dir / "eval").glob("*.json")):
        result = _read_json(path)
        if not isinstance(result, dict) or not isinstance(result.get("modes") or result.get("rows"), dict):
            continue
        if (result.get("checkpoint") is None) != (checkpoint is None) or (
                checkpoint is not None and Path(result["checkpoint"]).name != checkpoint.name):
            continue  # another model's weights
        scored = result.get("modes") or result["rows"]  # Sudoku's modes; infill's rows (mode, length), pass@1
        key = "exact" if "modes" in result else "pass@1"
        exact = " / ".join(f"{m} {v[key]:.1%}" for m, v in scored.items()
                           if isinstance(v, dict) and isinstance(v.get(key), float))
        baseline = result.get("baseline_untrained_rules", {}).get("exact")
        rows.append(f"| `{result.get('data')}` | {result.get('n')} | {exact} | "
                    f"{'' if baseline is None else f'{baseline:.1%}'} | `eval/{path.name}` |")
    if not rows:
        return ["None recorded when this export was written (`dgft eval RUN data=FILE` writes them)."]
    note = ("The run trained and was evaluated on the 4-bit base. This export is the unquantized base with the adapter "
            "merged, a different model (export.json records the gap), so these figures do not carry over to it."
            if quantized else
            "The export gives the run's logits within the differences export.json records, so these figures hold for "
            "it, each with the sampler settings its record names.")
    return [f"Exact answers per sampling mode (Sudoku; pass@1 per row for infilling), as `dgft eval` wrote them in "
            f"the run's `eval/` folder. {note}", "",
            "| data | n | exact (pass@1) by mode | untrained baseline, rules | record |", "|---|---|---|---|---|", *rows]


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
