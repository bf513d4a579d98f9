"""The evaluation recipe: `dgft eval RUN [data=PATH]` -> RUN/eval/<name>.json and <name>.md; `dgft eval EXPORT
data=PATH` (a `dgft export` directory) -> EXPORT/eval/<name>.*, with no untrained baseline (an export does not
carry the model before training) and the sha256 of the weights measured in the result (a later export of the run
keeps EXPORT/eval; each result names the weights it was made with).

Shared setup (the run's saved config, the device, the run's sampler settings with the eval-time overrides,
checks of the eval options), then the run's task evaluates, each in its own module: Sudoku
(`dgft.tasks.sudoku.evaluate`: free, clamped and rules side by side, an untrained-model baseline for rules)
and code infilling (`dgft.tasks.infill.evaluate`: free and clamped, each with the model's own length and
the true one; exact match, and pass@k in the sandbox on HumanEval-Infilling files).

Example: `dgft eval outputs/sudoku/2026-11-27_15-00-00 data=../shared/benchmarks/sudoku/norvig_easy50.csv`;
`dgft eval outputs/infill/latest data=../shared/benchmarks/infill/HumanEval-SingleLineInfilling.jsonl.gz`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from dgft.config import (NOISE_KINDS, ConfigError, EvalRecipe, SamplerConfig, check_sampler, refuse_empty, refuse_unknown,
                         unread_settings)
from dgft.export import check_export, is_export, load_export, read_settings
from dgft.runs import (RunError, checkpoint_dir, final_weights_dir, held_by, load_model, load_tokenizer,
                       note_stopped_early, real_run_dir, require_heldout, require_weights, stopped_early, take_lock)
from dgft.tasks import get_task
from dgft.train import pick_device


def evaluate(cfg) -> dict:
    if OmegaConf.is_missing(cfg, "run"):
        raise ConfigError("no run given: dgft eval RUN|EXPORT [data=PATH] [overrides ...]")
    refuse_empty(cfg, ("run", "data", "name", "checkpoint"))
    refuse_unknown(cfg, OmegaConf.structured(EvalRecipe))
    run = real_run_dir(Path(cfg.run))
    run_cfg, export = read_settings(run)
    if cfg.baseline is None:  # an export does not carry the model before training, and infill has no baseline
        cfg.baseline = not export and run_cfg.task.name == "sudoku"
    scfg = eval_sampler(cfg, run_cfg)
    check_options(cfg, run_cfg, scfg)
    given = lambda key: OmegaConf.select(cfg, key) is not None  # noqa: E731 - on this command line
    for line in unread_settings(OmegaConf.create({"sampler": scfg}), given):
        print(f"note: {line}", file=sys.stderr)
    if export:
        check_export_options(cfg, run_cfg, run)
    elif cfg.checkpoint:  # found and its manifest checked once, before any model loads, as export does
        cfg.checkpoint = str(checkpoint_dir(run, cfg.checkpoint))
    device = pick_device(cfg.device)
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    if not export:
        require_weights(run, run_cfg, cfg.checkpoint)  # before the data: a run that never trained says so
        if not cfg.checkpoint:  # a checkpoint is what it is; the final weights of a stopped run are said to be so
            note_stopped_early(run, run_cfg)
    if run_cfg.task.name == "infill":
        from dgft.tasks.infill.evaluate import evaluate_run
    else:
        from dgft.tasks.sudoku.evaluate import evaluate_run
    return evaluate_run(cfg, run, run_cfg, scfg, device)


def check_export_options(cfg, run_cfg, export: Path) -> None:
    """The eval options an export cannot serve: a ConfigError naming the option and what to do instead."""
    if cfg.checkpoint:
        raise ConfigError(f"checkpoint={cfg.checkpoint}: {export} is an export, which holds one set of weights; "
                          "evaluate the checkpoint in its run, or export it (dgft export RUN checkpoint=step-N)")
    if cfg.baseline and run_cfg.task.name == "sudoku":  # infill has no baseline, run or export
        raise ConfigError(f"baseline=true: {export} is an export, which does not carry the model before training; "
                          "evaluate its run for the untrained baseline, or pass baseline=false")
    if not cfg.data:
        raise ConfigError(f"{export} is an export, which carries no held-out split: pass data=PATH")


def trained_model(cfg, run: Path, run_cfg, device):
    """The weights an evaluation measures: an export's, or the run's final (or `checkpoint`) ones."""
    if is_export(run):
        return load_export(run, device)
    return load_model(run, run_cfg, checkpoint=cfg.checkpoint, device=device)


def trained_tokenizer(run: Path):
    """The tokenizer of a run (RUN/tokenizer) or of an export (beside its weights)."""
    if is_export(run):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(run))
    return load_tokenizer(run)


def eval_sampler(cfg, run_cfg):
    """The sampler an evaluation runs: the run's own, with the `sampler.*` overrides `dgft eval` was given."""
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.sampler).items() if v is not None}
    return OmegaConf.merge(run_cfg.sampler, overrides)


def data_file(cfg, run: Path, split: str) -> Path:
    """The file an evaluation reads: `data=`, else the run's held-out split RUN/data/<split>, as training wrote it
    (`runs.require_heldout`). A pipe or a device is refused: the file is read twice, for its records and for the
    sha256 its result records, and a pipe gives everything to the first reading (a process substitution's result
    recorded the hash of nothing) or blocks the second for good (a FIFO)."""
    if not cfg.data:
        return require_heldout(run, run / "data" / split)
    path = Path(cfg.data)
    if path.exists() and not path.is_file() and not path.is_dir():  # a folder: each task's reader names it
        raise ConfigError(f"data={cfg.data}: not a regular file (a pipe, a device, or a process substitution such "
                          "as <(...)); save it to a file and evaluate that")
    return path


def output_name(cfg, default: str) -> str:
    """RUN/eval/<name>.*: `name=`, else the data file's name, with the checkpoint's (`heldout_step-000500`), so
    that evaluating a checkpoint never overwrites the run's final model's results. `name=easy50.json` is easy50 (the
    suffixes are the evaluation's own: easy50.json.json was written), said on stderr."""
    name = str(cfg.name) if cfg.name else f"{default}_{Path(cfg.checkpoint).name}" if cfg.checkpoint else default
    stem = name.rsplit(".", 1)[0]
    if cfg.name and name.endswith((".json", ".md")) and stem:
        print(f"note: name={name}: the result is named {stem} (its files take their own suffixes: .json, .md, "
              "_samples.jsonl)", file=sys.stderr)
        name = stem
    longest = f".{name}_denoising.tmp-{'9' * 7}.png"  # the longest file written for it: a temporary (cache.replace_file)
    if len(longest.encode()) > 255:  # a file system's limit on one name
        raise ConfigError(f"the result name {name[:40]}... ({len(name.encode())} bytes, "
                          f"{'name=' if cfg.name else 'from the data file'}) is too long for its files' names "
                          f"({len(longest.encode()) - len(name.encode())} bytes more must fit in 255); give a "
                          "shorter name=")
    return name


def claim_output(out_dir: Path, name: str, settings: dict, overwrite: bool) -> None:
    """Refuse, before any work, to replace RUN/eval/<name>.json when it holds an evaluation made with other
    `settings` (data, weights, seed, limit, sampler, ...): a ConfigError naming what differs. The same settings again
    (a re-run) replace it, as `overwrite=true` replaces any; an unreadable result is replaced. `hold_result` checks
    again, holding the name."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"{out_dir}: a file where the evaluations' folder goes; move it away")
    if out_dir.is_symlink() and not out_dir.exists():
        raise RunError(f"{out_dir}: a link to {os.readlink(out_dir)}, which does not exist; make it, or remove the "
                       "link")
    blocked = [p.name for p in (out_dir / f"{name}.json", out_dir / f"{name}.md", out_dir / f"{name}_samples.jsonl")
               if p.is_dir()]
    if blocked:  # found now, not after the evaluation has run
        raise RunError(f"{out_dir}: {', '.join(blocked)} is a folder where the result goes; move it away")
    if (holder := held_by(out_dir / f".{name}.lock")) is not None:  # said now; `hold_result` takes it
        raise _in_use(out_dir, name, holder)
    _check_settings(out_dir / f"{name}.json", settings, overwrite)


def _in_use(out_dir: Path, name: str, holder: str) -> RunError:
    return RunError(f"{out_dir / name}.*: another `dgft eval` (pid {holder}) is writing this result now; wait for it "
                    "to end, or give this one another name=")


def hold_result(out_dir: Path, name: str, settings: dict, overwrite: bool):
    """RUN/eval/<name>.* for this evaluation, once its model has loaded and before it samples: the folder made and
    written to (a read-only or full one is refused now, not after the sampling), held against another `dgft eval` of
    the same name until `write_result` (two at once left one's answers under the other's settings), and its settings
    checked again (`claim_output`), as another evaluation may have written it since. -> the claim (an open file: a
    context manager), for `write_result`."""
    try:
        out_dir.mkdir(exist_ok=True)
        claim = take_lock(out_dir / f".{name}.lock", lambda holder: _in_use(out_dir, name, holder))
    except OSError as err:
        where = f": {Path(err.filename).name}" if err.filename and Path(err.filename) != out_dir else ""
        raise RunError(f"{out_dir}: the results cannot be written there ({err.strerror or err}{where}); nothing was "
                       "evaluated. Make it writable, or evaluate a copy of the run (or its export) elsewhere") from err
    try:
        _check_settings(out_dir / f"{name}.json", settings, overwrite)
    except BaseException:
        claim.close()
        raise
    return claim


def _check_settings(old: Path, settings: dict, overwrite: bool) -> None:
    import json

    if overwrite or not old.exists():
        return
    try:
        before = json.loads(old.read_text())
    except (OSError, ValueError):
        return
    now = json.loads(json.dumps(settings))  # as it will read back (tuples as lists)
    # a sampler key one record lacks (made before the setting, or from an export's file without it) is its default
    defaults = {"sampler": json.loads(json.dumps(asdict(SamplerConfig())))}
    diff = []
    for key, value in now.items():
        if key == "weights_sha256" and key not in before:  # a result from before dgft recorded it: not a difference
            continue
        was = before.get(key)
        if key == "data":
            if difference := _data_difference(before, value):
                diff.append(difference)
        elif key == "checkpoint" and isinstance(was, str) and isinstance(value, str):  # of this run: its name
            if Path(was).name != Path(value).name:  # decides, typed from wherever (its path is relative to there)
                diff.append(f"{key} {Path(was).name!r} -> {Path(value).name!r}")
        elif isinstance(value, dict) and isinstance(was, dict):
            default = defaults.get(key, {})
            diff += [f"{key}.{k} {was.get(k)!r} -> {value.get(k)!r}" for k in sorted(set(value) | set(was))
                     if was.get(k, default.get(k)) != value.get(k, default.get(k))]
        elif was != value:
            diff.append(f"{key} {was!r} -> {value!r}")
    if diff:
        raise ConfigError(f"{old} holds an evaluation with other settings ({'; '.join(diff[:4])}"
                          f"{'; ...' if len(diff) > 4 else ''}): name=OTHER keeps both, overwrite=true replaces it")


def _data_difference(before: dict, data) -> str | None:
    """What differs between the data file an earlier result measured and `data` (a path as typed now), or None for the
    same data. With a recorded sha256, the content decides, whatever path each command was given from wherever it
    ran: other content is another file typed, the same words naming another file from another folder, or the file
    edited since. Without one (an older result, or a file unreadable now), the path as typed or resolved."""
    from dgft.checkpoint import sha256

    was, recorded = before.get("data"), before.get("data_sha256")
    path = Path(data) if data else None
    try:
        now = sha256(path) if isinstance(recorded, str) and path is not None and path.is_file() else None
    except OSError:
        now = None
    if now is None:
        same = was == data or (path is not None and before.get("data_path") == str(path.resolve()))
        return None if same else f"data {was!r} -> {data!r}"
    if now == recorded:
        return None
    where, measured = str(path.resolve()), before.get("data_path")
    if measured == where or (not isinstance(measured, str) and was == data):  # the file itself, edited since
        return f"the content of {data}: sha256 {recorded[:12]}... -> {now[:12]}..."
    if was == data:  # the same words typed from another folder: another file
        return f"data {data} is {where}, the result measured {measured}: sha256 {recorded[:12]}... -> {now[:12]}..."
    return f"data {was!r} -> {data!r}"


def write_result(claim, out_dir: Path, name: str, files: dict) -> None:
    """Write an evaluation's files ({path: text, a function writing the file it is given, or None to remove it}, in
    order, the .json last), then let go of the `hold_result` claim. Each is first written whole beside its place,
    so a full disk leaves the result that was there as it was (said, naming the file); then the result replaced loses
    its .json and .md, and the new files take their places, the .json last: an evaluation killed in between leaves
    new files without a .json (unfinished, as it is), never beside an old .json that would name them as its own."""
    from dgft.cache import written_beside

    staged = {}  # path -> its written temporary (None: to be removed)
    try:
        try:
            for path, content in files.items():
                staged[path] = None if content is None else written_beside(path, content)
        except OSError as err:  # a full disk: nothing of this result is left, the one before is whole
            raise RunError(f"{out_dir}: could not write the result {name} ({err.strerror or err}); the one that was "
                           "there is as it was, and this evaluation's answers are lost: make room, then run it "
                           "again") from err
        for suffix in (".json", ".md"):
            (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
        for path, tmp in staged.items():
            if tmp is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(tmp, path)
    finally:  # a temporary not renamed (a failure, a kill) never stays
        for tmp in staged.values():
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        claim.close()


def provenance_line(result: dict) -> str:
    """One line of an evaluation's .md saying which run and weights, which sampler settings, which seed and limit."""
    s = result.get("sampler", {})
    weights = f"checkpoint {result['checkpoint']}" if result.get("checkpoint") else "the run's final weights"
    if result.get("export"):
        step = result["export"].get("step")
        weights = f"its weights (step {step} of its run)" if step is not None else "its weights"
    threshold = {"entropy": "entropy_bound", "confidence": "confidence"}.get(s.get("acceptance"))  # the rule's own
    keys = [k for k in ("steps", "acceptance", threshold, "views", "passes", "temperature", "reprompt", "fill_forced",
                        "revise", "self_conditioning_from") if k in s]
    if result.get("stopped_early"):
        weights += f" ({result['stopped_early']})"
    what = "Export" if result.get("export") else "Run"
    return (f"{what} {result.get('run')}, {weights}; sampler " + ", ".join(f"{k}={s[k]}" for k in keys)
            + ("; batched by number of givens" if result.get("batch_by") == "givens" else "")
            + f"; seed {result.get('seed')}; " + _how_much(result) + " of the file.\n\n")


def _how_much(result: dict) -> str:
    """"the first N" of the file when `limit` cut it short, else "all" (a limit larger than the file read all)."""
    limit, n = result.get("limit"), result.get("n")
    read = n + sum((result.get("too_long") or {}).values()) if isinstance(n, int) else None  # infill: left out
    order = f" ({result['limit_order']})" if result.get("limit_order") else ""  # infill's held-out rows
    return f"the first {limit}{order}" if limit and (read is None or read >= limit) else "all"


def interrupted(cfg, run: Path, run_cfg) -> dict:
    """What an evaluation's result records when it measures the final weights of a run a signal stopped
    (`stopped_early`: a sentence, also in the .md); {} otherwise (a checkpoint, an export, a run that ended)."""
    if cfg.checkpoint or is_export(run):
        return {}
    early = stopped_early(run, run_cfg)
    return {"stopped_early": early} if early else {}


def made_by(data: Path, device) -> dict:
    """What an evaluation's result records about where it came from: the data file as resolved and its SHA-256 (the
    `data` setting is the path as typed, relative to wherever eval ran), and `dgft.runs.environment`."""
    import torch

    from dgft.checkpoint import sha256
    from dgft.runs import environment

    return {"data_path": str(Path(data).resolve()), "data_sha256": sha256(data),
            "environment": {**environment(device), "threads": torch.get_num_threads()}}


def provenance(cfg, run: Path) -> dict:
    """What an evaluation's result records about its own options: which weights (an export's: their step and
    sha256, `export`; a run's: the sha256 of each weight file, `weights_sha256`, so a card lists it only while the
    run's weights are those it measured), which sampling seed, how many."""
    from dgft.checkpoint import weight_hashes

    if is_export(run):
        weights = {"export": check_export(run)}
    else:
        src = checkpoint_dir(run, cfg.checkpoint) if cfg.checkpoint else final_weights_dir(run)
        weights = {"weights_sha256": weight_hashes(src)} if src is not None else {}
    return {"checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None, **weights, "seed": int(cfg.seed),
            "limit": int(cfg.limit)}


def check_options(cfg, run_cfg, scfg) -> None:
    """Eval options that compose but do not fit the run's task; raises ConfigError naming the key."""
    name = run_cfg.task.name
    if name not in ("sudoku", "infill"):  # an export's file with another task is refused as it is read
        raise ConfigError(f"{cfg.run}: task.name={name!r} in its config.yaml is not a task dgft evaluates")
    if run_cfg.noise.kind not in NOISE_KINDS:  # what the prior draws from: an edited record must not pass for uniform
        raise ConfigError(f"{cfg.run}: noise.kind={run_cfg.noise.kind!r} in its config: expected one of "
                          f"{', '.join(NOISE_KINDS)}")
    out = None if cfg.name is None else str(cfg.name)
    if out is not None and (out in ("", ".", "..") or Path(out).name != out):
        raise ConfigError(f"name={out!r}: must be a plain file name, written as RUN/eval/<name>.json (no "
                          "directories)")
    if out is not None and out.startswith("."):
        raise ConfigError(f"name={out!r}: a name starting with '.' would hide the result files (RUN/eval/{out}.json); "
                          "give one that does not")
    if cfg.samples < 1 or cfg.workers < 1:
        raise ConfigError(f"samples={cfg.samples}, workers={cfg.workers}: both must be >= 1")
    if cfg.num_threads < 0:
        raise ConfigError(f"num_threads={cfg.num_threads}: must be >= 0 (0: torch's default, one per core)")
    if cfg.limit < 0:
        raise ConfigError(f"limit={cfg.limit}: must be >= 0 (the first N puzzles or problems; 0: all)")
    if cfg.on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={cfg.on_error!r}: expected raise or skip")
    if not 0 <= cfg.seed < 2**32:  # numpy's range, as dgft train checks it
        raise ConfigError(f"seed={cfg.seed}: must be in [0, 2**32)")
    if cfg.batch_by not in ("size", "givens"):
        raise ConfigError(f"batch_by={cfg.batch_by!r}: expected size or givens")
    if cfg.isolation not in ("auto", "namespaces", "process"):
        raise ConfigError(f"isolation={cfg.isolation!r}: expected auto, namespaces or process (the sandbox's, for "
                          "infill's test programs)")
    # A run saved before a sampler setting existed lacks it: the schema's default fills it for the checks.
    check_sampler(OmegaConf.merge(asdict(SamplerConfig()), scfg), name, run_cfg.noise.kind,
                  sc_untrained=OmegaConf.select(run_cfg, "model.name", default=None) == "tiny"  # an export: unknown
                  and not OmegaConf.select(run_cfg, "noise.self_conditioning_p", default=0.5))
    views = int(scfg.get("views", 1))
    if views > 1 and run_cfg.task.get("tokens") == "text":  # infill's views: check_sampler
        raise ConfigError(f"sampler.views={views}: symmetric views are for Sudoku with tokens=cell or digit")
    if name == "sudoku":
        if cfg.samples != 1 or cfg.rerank:
            raise ConfigError(f"samples={cfg.samples}, rerank={cfg.rerank}: several samples and their rerank are "
                              "options of infill runs")
        return
    if cfg.on_error != "raise":
        raise ConfigError("on_error: infilling files have no lines to skip; a bad line always stops the run")
    if cfg.baseline:
        raise ConfigError("baseline=true: the untrained baseline measures what Sudoku's rule masks solve alone; an "
                          "infill run has none")
    if cfg.batch_by != "size":
        raise ConfigError(f"batch_by={cfg.batch_by}: batching by number of givens is for Sudoku runs")
    if cfg.rerank and cfg.samples < 2:
        raise ConfigError("rerank=true: needs samples >= 2 to choose among (each sample starts from its own noise; "
                          "sampler.temperature > 0 makes them differ more)")
    if cfg.samples > 1 and scfg.temperature == 0 and run_cfg.noise.kind == "mask":
        raise ConfigError(f"samples={cfg.samples}: with mask noise and sampler.temperature=0 every sample is the "
                          "same; set sampler.temperature > 0")


def untrained_model(run_cfg, run: Path, device, dtype=None):
    """The run's model before training: a LoRA run's frozen base (a tiny run's is saved in RUN/base), or, for the
    tiny model trained in full, its initial weights built again as training built them (the run's seed, the
    structured embedding and attention starts the config asks for). `dtype`: the trained model's, so that the
    comparison is of weights, not precision (a 4-bit base stays as it is)."""
    import torch

    from dgft.runs import load_base
    from dgft.train import trainable_model

    if run_cfg.model.finetune == "full" and run_cfg.model.name == "tiny":
        gen = torch.Generator().manual_seed(run_cfg.seed)  # as `dgft train` seeds it before building the model
        return trainable_model(None, run_cfg, get_task(run_cfg.task), device, gen).eval()
    if run_cfg.model.get("quantize", "none") == "nf4":
        return load_base(run, run_cfg, device=device).eval()
    return load_base(run, run_cfg).to(device, dtype=dtype).eval()
