"""An export's README.md (its model card): where the weights came from, how to load and sample them, and what the
run's evaluations measured, each figure with the file it is read from.

`model_card(run_dir, rcfg, checkpoint, step, checked)` -> the text; `dgft.export` writes it into every export,
with `checked` saying how the export's logits compare with the run's (so whether the run's figures carry over).
The card lists the run's evaluations there were when it was written; `dgft export` run again on an export that is
up to date brings that list up to date (`with_evaluations`), adds the export's own (`dgft eval EXPORT`, in its
`eval/`, those made with its present weights), and leaves the rest of the card as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from dgft.runs import final_weights_dir, stopped_early

EVALUATIONS = "## The run's evaluations"
TABLE_HEAD = ("| data | n | by mode | untrained baseline, rules | record |", "|---|---|---|---|---|")
PUZZLES = {9: "003020600900305001001806400008102900700000008006708200002609500800203009005010300",  # Norvig's first
           4: "3102200002100320"}  # d1's first


def model_card(run_dir: Path, rcfg, checkpoint: Path | None, step: int | None, checked: str) -> str:
    """`checked`: one paragraph on how the export's logits compare with the run's model's."""
    if "\n\n" in checked:  # `with_evaluations` finds the list after it
        raise ValueError("model_card: `checked` must be one paragraph")
    run = _read_json(run_dir / "run.json")
    run = {k: v for k, v in run.items() if isinstance(v, str)} if isinstance(run, dict) else {}  # an edit: unknown
    weights = f"checkpoint `{checkpoint.name}`" if checkpoint else "its final weights"
    early = None if checkpoint else stopped_early(run_dir, rcfg)
    made = ", ".join(x for x in (f"dgft {run['dgft']}" if run.get("dgft") else "",
                                 f"commit {run['dgft_commit'][:12]}" if run.get("dgft_commit") else "",
                                 f"trained on {run['cpu']}" if run.get("cpu") else "",
                                 f"GPU {run['gpu']}" if run.get("gpu") else "") if x)
    quantized = rcfg.model.get("quantize", "none") == "nf4"
    lines = [f"# {rcfg.name}: a DiffusionGemmaForBlockDiffusion exported by dgft", "",
             f"From the run `{Path(run_dir).resolve()}` ({weights}, step {step}): recipe `{rcfg.name}`, model `{rcfg.model.name}`, "
             f"{rcfg.model.finetune} fine-tuning{' on a 4-bit base' if quantized else ''}, noise "
             f"`{rcfg.noise.kind}`, seed {rcfg.get('seed')}" + (f"; {made}" if made else "") + "."
             + (f" **Note: {early}.**" if early else ""), "",
             "## Load and sample", "",
             "    from transformers import DiffusionGemmaForBlockDiffusion",
             '    model = DiffusionGemmaForBlockDiffusion.from_pretrained("THIS_DIR")', "",
             "transformers' `generate()` renoises any canvas it is given, so it cannot keep what must not change. "
             "dgft's sampler pins it, with the settings this model was trained for (`dgft_sampler.json`: the "
             "sampler, the noise and the task's layout). `dgft eval THIS_DIR data=FILE` measures this export as dgft "
             "measures its runs, with no untrained baseline, and writes to this folder's `eval/` (kept when the run is "
             "exported again; each result names the weights' sha256)."]
    if rcfg.task.name == "sudoku" and rcfg.task.get("tokens", "cell") != "text":
        size = max(int(n) for n in rcfg.task.get("sizes") or (9,))
        lines += ["", "    from dgft.solve import load_solver",
                  f'    load_solver("THIS_DIR")(["{PUZZLES[size]}"], mode="rules")   # answers as strings', ""]
    lines += ["", EVALUATIONS, "", checked, ""]
    return "\n".join(lines) + "\n" + _evaluations_text(run_dir, checkpoint)


def with_evaluations(card: str, run_dir: Path, checkpoint: Path | None, export_dir: Path | None = None,
                     weights: dict | None = None) -> str | None:
    """`card`, as `model_card` wrote it, with its list of the run's evaluations as they are now, and of those made of
    `export_dir` itself with its present `weights` (file -> sha256) (all else kept); None when the card has no such
    section where model_card puts it (edited by hand: not dgft's to rewrite)."""
    head, marker, rest = card.partition(f"\n{EVALUATIONS}\n\n")
    checked, gap, _ = rest.partition("\n\n")  # `checked` is one paragraph, then the lists
    if not (marker and gap):
        return None
    return head + marker + checked + gap + _evaluations_text(run_dir, checkpoint, export_dir, weights)


def _evaluations_text(run_dir: Path, checkpoint: Path | None, export_dir: Path | None = None,
                      weights: dict | None = None) -> str:
    own = _export_evaluations(export_dir, weights) if export_dir is not None and weights else []
    return "\n".join(_evaluations(run_dir, checkpoint) + own).rstrip() + "\n"


def _evaluations(run_dir: Path, checkpoint: Path | None) -> list[str]:
    """The run's evaluations of the weights exported: of that checkpoint, or of the final weights, and where a result
    records the weights' sha256 (since session 35), only while they are the weights now there (a result made before
    a resume measured others)."""
    from dgft.checkpoint import weight_hashes

    rows, now = [], None
    for path, result in _results(run_dir / "eval"):
        if (result.get("checkpoint") is None) != (checkpoint is None) or (
                checkpoint is not None and Path(result["checkpoint"]).name != checkpoint.name):
            continue  # another model's weights
        if "weights_sha256" in result:
            if now is None:
                now = weight_hashes(checkpoint or final_weights_dir(run_dir) or run_dir / "model")
            if result["weights_sha256"] != now:
                continue  # the weights it measured were replaced since (a resumed run's)
        rows.append(_row(result, f"eval/{path.name}"))
    if not rows:
        return ["None recorded when this card was written (`dgft eval RUN data=FILE` writes them; `dgft export RUN` "
                "again adds them here)."]
    return ["As `dgft eval` wrote them in the run's `eval/` folder when this card was written, each with the sampler "
            "settings its record names: exact answers per sampling mode (Sudoku); for infilling, pass@1 with the "
            "examples too long for the prompt counted as failures (`pass@1_all`), or exact middles where the file has "
            "no tests.", "", *TABLE_HEAD, *rows]


def _export_evaluations(export_dir: Path, weights: dict) -> list[str]:
    """The card's lines for `dgft eval EXPORT` results in the export's own `eval/` whose weights (file -> sha256, as
    the result records them) are `weights`, the export's present ones; [] when there are none."""
    rows = []
    for path, result in _results(export_dir / "eval"):
        if (result.get("export") or {}).get("weights_sha256") != weights:
            continue  # made with weights an earlier export had
        rows.append(_row(result, f"THIS_DIR/eval/{path.name}"))
    if not rows:
        return []
    return ["", "Measured on this export itself, with its present weights (`dgft eval THIS_DIR data=FILE` writes them "
            "in this folder's `eval/`):", "", *TABLE_HEAD, *rows]


def _results(folder: Path):
    """(path, result) for each evaluation result in `folder` (its .json files that hold per-mode or per-row
    figures), by name."""
    for path in sorted(folder.glob("*.json")):
        result = _read_json(path)
        if isinstance(result, dict) and isinstance(result.get("modes") or result.get("rows"), dict):
            yield path, result


def _row(result: dict, record: str) -> str:
    """One evaluation's line in a card's table: its data, how many, the headline figure per mode (or infill row), the
    untrained baseline where there is one, and the file it is read from."""
    scored = result.get("modes") or result["rows"]  # Sudoku's modes; infill's rows (mode, length)
    exact = " / ".join(f"{m} {_figure(v)}" for m, v in scored.items() if isinstance(v, dict) and _figure(v))
    baseline = result.get("baseline_untrained_rules", {}).get("exact")
    return (f"| `{result.get('data')}` | {result.get('n')} | {exact} | "
            f"{'' if baseline is None else f'{baseline:.1%}'} | `{record}` |")


def _figure(scores: dict) -> str:
    """A row's headline figure: pass@1 (left-out examples as failures) where tests ran, else exact answers."""
    for key in ("pass@1_all", "pass@1", "exact"):
        if isinstance(scores.get(key), float):
            return f"{'pass@1' if key.startswith('pass') else 'exact'} {scores[key]:.1%}"
    return ""


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
