"""`dgft train|eval|export`: split off the subcommand, hand the rest to Hydra.

    dgft train recipe=sudoku trainer.max_steps=200 seed=7
    dgft train --cfg job                      # print the composed config
    dgft train -m seed=0,1,2                  # sweep
    dgft eval outputs/sudoku/<run> data=puzzles.csv
    dgft train recipe=infill                  # code infilling
    dgft eval outputs/infill/<run> data=HumanEval-SingleLineInfilling.jsonl.gz
    dgft export outputs/sudoku/<run>
    dgft eval outputs/sudoku/<run>/export data=puzzles.csv   # an export, as anyone given it would

For eval and export the first argument without '=' is the run directory (`run=PATH` works too); for eval it may
be an export.
Hydra never changes the working directory.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import warnings
from pathlib import Path

COMMANDS = {"train": "train a model (Hydra overrides follow)",
            "eval": "evaluate a run or an export: dgft eval RUN|EXPORT [data=PATH]",
            "export": "write a standalone merged model: dgft export RUN"}
USAGE = "usage: dgft {train,eval,export} [RUN] [overrides ...]\n\n" + "\n".join(
    f"  {k:<7} {v}" for k, v in COMMANDS.items()) + ("\n\nEach subcommand takes --help (train: its config groups "
                                                      "and keys; eval, export: their options).")


def recipes_dir() -> Path:
    env = os.environ.get("DGFT_RECIPES")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "recipes"
    if not (path / "train.yaml").exists():
        _exit(f"dgft: recipes not found at {path}; install dgft from its checkout (pip install -e .) "
                 f"or set DGFT_RECIPES to the recipes/ directory")
    return path


def compose_train(overrides: list[str]):
    """The train config `dgft train OVERRIDES` would run with, composed and checked, outside a Hydra app (for the
    bench scripts)."""
    from hydra import compose, initialize_config_dir

    from dgft.config import register, validate

    register()
    with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    validate(cfg)
    return cfg


def _run_dir(name: str, resume) -> str:
    """Hydra resolver for the run dir; an impossible resume=auto ends with the message, not a traceback."""
    from dgft.runs import RunError, run_dir_for

    try:
        return run_dir_for(name, resume)
    except RunError as err:
        _exit(f"dgft train: error: {err}")


def _signal_exit_code(run) -> int:
    """128 + the signal's number when a signal stopped the training before its end (130 for Ctrl-C, 143 for
    SIGTERM), as the shell reports a process a signal ended: `dgft train ... && dgft eval ...` stops there. 0 when
    it ran to its end or its time limit."""
    import signal

    from dgft.runs import summary

    stopped = (summary(Path(run)) or {}).get("stopped_by") or ""
    return 128 + signal.Signals[stopped].value if stopped in signal.Signals.__members__ else 0


def _hydra_subdir(resume) -> str:
    """Where Hydra records a train command in its run dir: .hydra/, or .hydra/resume-<time>/ for a resume."""
    import time

    return ".hydra" if resume in (None, "", "None") else f".hydra/resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def _known_errors():
    from dgft.checkpoint import CheckpointError
    from dgft.config import ConfigError
    from dgft.model import ModelLoadError
    from dgft.runs import RunError
    from dgft.tasks.infill.corpus import CorpusError
    from dgft.tasks.infill.humaneval import InfillFileError, SandboxError
    from dgft.tasks.sudoku.io import PuzzleFileError
    from dgft.train import OutOfMemory

    return (ConfigError, ModelLoadError, RunError, PuzzleFileError, InfillFileError, CorpusError, CheckpointError,
            OutOfMemory, SandboxError)


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning):
    """dgft's own notices (`checkpoint.Notice`: a torn checkpoint passed over, a stale one removed) as one line,
    `warning: ...`, not with the source line that raised them; other warnings as Python prints them."""
    from dgft.checkpoint import Notice

    if issubclass(category, Notice):
        return f"warning: {message}\n"
    return _default(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> None:
    warnings.formatwarning = _format_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a script that lost its subcommand must not look as if it ran
        _exit(f"dgft: no command given\n\n{USAGE}")
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _exit(f"dgft: unknown command {command!r}\n\n{USAGE}")
    if command in ("eval", "export") and {"-h", "--help"} & set(rest):
        print(_option_help(command))
        sys.exit(0)
    if command in ("eval", "export") and rest and not rest[0].startswith("-") and (
            "=" not in rest[0] or Path(rest[0]).is_dir()):  # a run folder with '=' in its name is the run too
        rest = [f"run={_quote(rest[0])}"] + rest[1:]

    import hydra

    from dgft.config import register

    register()
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("dgft_run_dir"):
        OmegaConf.register_new_resolver("dgft_run_dir", _run_dir, use_cache=True)
        OmegaConf.register_new_resolver("dgft_hydra_subdir", _hydra_subdir, use_cache=True)
    errors = _known_errors()
    from dgft.config import ConfigError
    from dgft.runs import RunError, RunInUse

    started = {}  # "command": Hydra has composed the config and called the command (errors after it are not its)

    @hydra.main(config_path=str(recipes_dir()), config_name=command, version_base="1.3")
    def _run(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        if started.pop("ours", False):  # the command's own errors: as Hydra reports them (a trimmed traceback)
            os.environ.pop("HYDRA_FULL_ERROR", None)
        started["command"] = True
        try:
            if command == "train":
                from dgft.train import train

                run = train(cfg, HydraConfig.get().runtime.output_dir, HydraConfig.get().overrides.task)
                if run is None:
                    _remove_refused_record(HydraConfig.get())  # nothing trained: no record of a command that ran
                elif code := _signal_exit_code(run):
                    sys.exit(code)
            elif command == "eval":
                from dgft.evaluate import evaluate

                evaluate(cfg)
            else:
                from dgft.export import export

                export(cfg)
        except errors as err:
            print(f"dgft {command}: error: {err}", file=sys.stderr)
            if command == "train" and not cfg.get("resume") and not isinstance(err, RunInUse):
                _remove_if_empty(Path(HydraConfig.get().runtime.output_dir))
            if command == "train" and cfg.get("resume") and isinstance(err, (ConfigError, RunError)):
                _remove_refused_record(HydraConfig.get())  # a refusal: the run is as it was, its record too
            sys.exit(128 + err.signum if getattr(err, "signum", 0) else 2)  # a signal in setup: as in training
        except KeyboardInterrupt as err:  # Ctrl-C in eval or export, a second signal in training: no traceback, the
            signum = getattr(err, "signum", signal.SIGINT)  # shell's code (130 for Ctrl-C, 143 for SIGTERM)
            how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"dgft {command}: interrupted ({how}){_stopped_again(err)}", file=sys.stderr)
            sys.exit(128 + signum)

    if command == "train":
        _check_train_words(rest)
        rest = _resume_in_place(rest)
        _check_output_dir(rest)
        if {"-m", "--multirun"} & set(rest) and not {"--cfg", "-c", "--help", "-h", "--info"} & set(rest):
            _check_sweep(rest)
    else:
        _run_comes_first(command, rest)
    sys.argv = [f"dgft {command}"] + rest
    if command == "train" and {"-h", "--help"} & set(rest):
        _composed(lambda: _help_without_schemas(_run), command, started)
        return
    _composed(_run, command, started)
    if command == "train" and {"--cfg", "-c"} & set(rest) and not {"-m", "--multirun"} & set(rest):
        _check_printed(rest)


def _check_printed(rest: list[str]) -> None:
    """`dgft train --cfg job`: Hydra prints the composed config without dgft's checks (ranges, unknown keys, the
    device); they run after it, so a config training would refuse says so, naming the key, with exit 2. Not for a
    resume (checked against the run's own config) nor a config composed from a directory of one's own."""
    if {"--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn"} & {a.split("=")[0] for a in rest}:
        return
    overrides = [a for a in _plain_words(rest) if not a.lstrip("+~").startswith("hydra.")]  # not the train config
    if _override(overrides, "resume", "null") not in ("null", "None", ""):
        return
    from dgft.config import ConfigError
    from dgft.train import pick_device

    try:
        pick_device(compose_train(overrides).device)
    except ConfigError as err:
        _exit(f"dgft train: error: {err} (training would refuse the config printed above)")


def _composed(run_hydra, command: str, started: dict) -> None:
    """Run the Hydra app with the errors of composing its config (a recipe file that is not valid YAML, a config or
    key that does not exist, an override of the wrong type) said as dgft's other refusals are: one message on stderr,
    naming the file, line or key as Hydra, OmegaConf or the YAML parser does, and exit status 2. Hydra itself prints a
    traceback for some of them (the YAML parser's) and exits 1. Errors once the command runs are Hydra's to report,
    as before (the command catches the ones it knows; any other is a bug, with its traceback): the command unsets
    HYDRA_FULL_ERROR when it starts. HYDRA_FULL_ERROR=1 in the environment keeps Hydra's own reports throughout."""
    import hydra.errors
    import omegaconf.errors
    import yaml

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        run_hydra()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises, instead of printing and exiting
    started["ours"] = True
    try:
        run_hydra()
    except (hydra.errors.HydraException, omegaconf.errors.OmegaConfBaseException, yaml.YAMLError) as err:
        if started.get("command"):
            raise
        _exit(f"dgft {command}: error: {_composition_message(err, command)}")
    except ValueError as err:  # Hydra's own flags that do not go together (`-m --cfg job`); dgft's own: a bug
        if started.get("command") or not _raised_by_hydra(err):
            raise
        _exit(f"dgft {command}: error: {err}")
    finally:
        if started.pop("ours", False):
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _raised_by_hydra(err: BaseException) -> bool:
    """Whether `err` was raised inside Hydra's own code (its command-line checks), not dgft's."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and "hydra" in Path(frames[-1].filename).parts


def _composition_message(err: Exception, command: str) -> str:
    """What went wrong composing the config, in Hydra's, OmegaConf's or the YAML parser's words, with a hint for the
    usual slip: a recipe file without `# @package _global_` sets keys under `recipe.` that the schema lacks. A key
    that does not exist is said as dgft says it (Hydra's advice, to append it with `+`, would be refused)."""
    import yaml

    if isinstance(err, yaml.YAMLError):
        return f"a config file is not valid YAML: {err}"
    message = str(err).strip()
    unknown = re.match(r"Could not override '([^']+)'\.\s+To append to your config use \+", message)
    if unknown:
        from omegaconf import OmegaConf

        from dgft.config import EvalRecipe, ExportRecipe, TrainRecipe, not_a_setting, other_task_setting

        key = unknown.group(1)
        if command == "train" and (other := other_task_setting(key, None)):  # the task composed is not known here
            return other
        schema = {"train": TrainRecipe, "eval": EvalRecipe, "export": ExportRecipe}[command]
        return not_a_setting([key], OmegaConf.structured(schema))
    if getattr(err, "override", None) and err.override not in message:  # Hydra's grammar errors do not name it
        message = f"override {err.override}: {message}"
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in message:
        message += f"\n{str(cause).strip()}"
    match = re.search(r"In '(recipe/[^']+)'", message)
    composed = re.search(r"full_key: (task\.\S+)\s.*object_type=(\w+)", message, re.S)
    if match and composed:  # `task=infill` beside a Sudoku recipe: the recipe's task settings meet another task
        from omegaconf import OmegaConf

        from dgft.config import TASK_SCHEMAS

        task = next((name for name, schema in TASK_SCHEMAS.items() if schema.__name__ == composed.group(2)), None)
        leaf = composed.group(1).split(".")[1]
        own = [name for name, schema in TASK_SCHEMAS.items() if leaf in OmegaConf.structured(schema)]
        if task is not None and own and _override(sys.argv[1:], "task", None) is not None:  # not a misspelt key
            resumed = _override(sys.argv[1:], "resume", "null") not in ("null", "None", "")
            then = ("a resumed run keeps its recipe and task, so train a new run with" if resumed
                    else f"for a run of the {task} task, give")
            message += (f"\n(hint: {match.group(1)}.yaml sets {composed.group(1)} for its own task, which the {task} "
                        f"task does not have: `task={task}` alone keeps that recipe; {then} recipe={task})")
    if match and re.search(r"Key 'recipe' not in", message):
        message += (f"\n(hint: {match.group(1)}.yaml sets its keys under `recipe.`; a recipe file starts with the "
                    "line `# @package _global_`, as the recipes in recipes/recipe/ do, so that they are the "
                    "config's own keys)")
    return message


def _help_without_schemas(run_hydra) -> None:
    """Hydra's `dgft train --help`, less the `*_schema` options of the config groups: a task's schema is stored in
    the `task` group for composition (recipes/task/*.yaml extend it), not as a task to pick."""
    import contextlib
    import io

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            run_hydra()
    finally:
        groups, sep, config = out.getvalue().partition("== Config ==")
        lines = []
        for line in groups.splitlines(keepends=True):
            group, colon, options = line.partition(": ")
            if colon and "_schema" in options and " " not in group:
                kept = [o for o in options.strip().split(", ") if not o.endswith("_schema")]
                line = f"{group}: {', '.join(kept)}\n"
            lines.append(line)
        print("".join(lines) + sep + config, end="")


HELP = {
    "eval": "dgft eval RUN|EXPORT [data=PATH] [key=value ...]\n\nEvaluate a run, or an export (`dgft export`'s "
            "directory; data= needed, no untrained baseline): every sampling mode side by side (Sudoku), pass@k "
            "(infill). Writes RUN/eval/<name>.json, .md, _samples.jsonl and, for Sudoku, _denoising.png (plot=true) "
            "(EXPORT/eval/ for an export).\n\n"
            "Options (key=value):",
    "export": "dgft export RUN [out=DIR] [checkpoint=step-N]\n\nWrite a standalone model directory (safetensors, "
              "config, tokenizer, sampler settings); a LoRA adapter is merged and the merged logits checked against "
              "it.\n\nOptions (key=value):"}


def _option_help(command: str) -> str:
    """`dgft eval --help`, `dgft export --help`: usage, then every option with its default and what it does (the
    schema's own comments, `dgft.config`)."""
    from dgft.config import EvalRecipe, ExportRecipe, SamplerConfig, option_help

    import textwrap

    options = option_help(EvalRecipe, SamplerConfig) if command == "eval" else option_help(ExportRecipe)
    return "\n\n".join(textwrap.fill(part, 110) for part in HELP[command].split("\n\n")) + f"\n{options}"


def _override(overrides: list[str], key: str, default: str) -> str:
    """The value an override list gives `key` (the last one, as Hydra takes it; `+key=` and `++key=` too)."""
    values = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith(f"{key}=")]
    return values[-1] if values else default


def _stopped_again(err: BaseException) -> str:
    """What a second stop signal during training left: the checkpoint a resume goes on from, or none."""
    run = getattr(err, "run_dir", None)
    if run is None:
        return ""
    from dgft.checkpoint import latest_valid

    last = latest_valid(run)
    return (", a second time: stopped without a new checkpoint; "
            + (f"`dgft train resume={run}` goes on from {last.name}" if last else
               "the run had written none yet, so there is nothing to resume"))


def _resume_in_place(overrides: list[str]) -> list[str]:
    """`dgft train resume=RUN hydra.run.dir=X`: a resume continues RUN in its own directory, and X would only get
    Hydra's record of the command (a stray folder). The override is dropped, with a note when X is not RUN."""
    resume = _override(overrides, "resume", "null").strip("'\"")
    given = [o for o in overrides if o.lstrip("+").startswith("hydra.run.dir=")]
    if resume in ("null", "None", "") or not given:
        return overrides
    target = _override(overrides, "hydra.run.dir", "").strip("'\"")
    if resume == "auto" or Path(target).absolute().resolve() != Path(resume).absolute().resolve():
        print(f"dgft train: note: resume={resume} continues the run in its own directory; hydra.run.dir={target} "
              "is ignored", file=sys.stderr)
    return [o for o in overrides if o not in given]


def _check_output_dir(overrides: list[str]) -> None:
    """Fail with the path named, before Hydra writes into a run directory: an empty value (an unset shell variable
    would train into the working directory), another run's directory or a folder holding other files, or one that
    cannot be created."""
    target = _override(overrides, "hydra.run.dir", None)
    resume = _override(overrides, "resume", "null")
    if target is not None and resume in ("null", "None", ""):  # before Hydra rewrites another run's record
        _check_new_dir(target, "hydra.run.dir")


LEFT_BY_A_REFUSAL = {".hydra", "train.log", ".train.lock"}  # what a command refused before its first step leaves


def _check_new_dir(target: str, key: str, shown: str | None = None) -> None:
    """A directory a new run (or a sweep's job) may be written into: named, new or empty (or holding only what a
    refused or killed command left), and creatable; else exit naming `shown` (default `key=target`)."""
    from dgft.runs import RunInUse, cannot_make, refuse_used

    shown = shown or f"{key}={target}"
    given = Path(target.strip("'\""))
    if not target.strip("'\"").strip():
        _exit(f"dgft train: error: {key} is empty (an unset shell variable?); give the directory to write into")
    try:
        refuse_used(given, key)
    except RunInUse as err:
        _exit(f"dgft train: error: {err}")
    if given.is_dir():
        other = sorted(p.name for p in given.iterdir() if p.name not in LEFT_BY_A_REFUSAL)
        if other:
            listed = ", ".join(other[:5]) + (" ..." if len(other) > 5 else "")
            _exit(f"dgft train: error: {shown} holds files that are not a run ({listed}); a new run writes into a "
                  "new or empty directory")
    why = cannot_make(given)
    if why:
        _exit(f"dgft train: error: cannot create {shown}: {why}")


def _check_sweep(rest: list[str]) -> None:
    """`dgft train -m ...`: every job's config composed and range-checked before the first job starts, so a bad
    value in the sweep (`trainer.lr=-1,0.001`) is refused up front instead of stopping the sweep after the jobs
    before it have trained (or before the ones after it run)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dgft.config import ConfigError

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in rest if not a.startswith("-")])
    except Exception:  # noqa: BLE001 (a flag's value, or bad grammar: Hydra says what is wrong when it runs)
        return
    choices = []
    for o in overrides:
        key = o.get_key_element()
        if key.lstrip("+~").startswith("hydra."):
            continue  # where jobs write and how Hydra runs them: not the train config
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices.append([f"{key}={v}" for v in values] if not o.is_delete() else [key])
    jobs = list(itertools.product(*choices))
    for job in jobs:
        try:
            from dgft.train import pick_device

            pick_device(compose_train(list(job)).device)  # device=cuda on a machine without one: before any job
        except ConfigError as err:
            _exit(f"dgft train: error: sweep job {' '.join(job)}: {err} (no job was started)")
        except Exception as err:  # noqa: BLE001 - Hydra's and OmegaConf's composition errors (a value of a wrong type)
            _exit(f"dgft train: error: sweep job {' '.join(job)}: {_composition_message(err, 'train')} (no job was "
                  "started)")
    subdir = _override(rest, "hydra.sweep.subdir", None)
    if len(jobs) > 1 and subdir is not None and "${" not in subdir:  # every job into one folder: the second refused
        _exit(f"dgft train: error: hydra.sweep.subdir={subdir} names one folder for all {len(jobs)} jobs of the sweep, "
              f"and a folder holds one run; give it a part that differs per job, e.g. "
              f"hydra.sweep.subdir='{subdir.strip(chr(39) + chr(34))}_${{hydra.job.num}}' (no job was started)")
    sweep = _override(rest, "hydra.sweep.dir", None)
    if sweep is None:
        return  # outputs/<name>/multirun_<time>: new each time
    sweep = sweep.strip("'\"")
    if not sweep.strip():
        _exit("dgft train: error: hydra.sweep.dir is empty (an unset shell variable?); give the directory to write "
              "the sweep into")
    if _override(rest, "hydra.sweep.subdir", None) is not None:  # job folders named by settings: checked as a whole
        if Path(sweep).is_dir() and any(Path(sweep).iterdir()):
            _exit(f"dgft train: error: hydra.sweep.dir={sweep} is not empty; with hydra.sweep.subdir set, a sweep "
                  "writes into a new or empty directory (its jobs' folders are not known before Hydra names them)")
        _check_new_dir(sweep, "hydra.sweep.dir")
        return
    for number in range(len(jobs)):  # each job's directory, before Hydra writes its record into one
        _check_new_dir(str(Path(sweep) / str(number)), "hydra.sweep.dir", f"hydra.sweep.dir={sweep} (job {number})")


_VALUED_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp", "--config-name", "-cn",
                 "--config-dir", "-cd", "--experimental-rerun"}  # Hydra's flags that take the next word


def _plain_words(args: list[str]):
    """The words of a command line that are neither flags nor a flag's value (`--cfg job`): overrides, and strays."""
    after_flag = False
    for a in args:
        if after_flag and "=" not in a and not a.startswith("-"):
            after_flag = False
            continue
        after_flag = a in _VALUED_FLAGS
        if not a.startswith("-"):
            yield a


def _stray(args: list[str]) -> str | None:
    """The first word that is neither a key=value override, a flag nor a flag's value (`--cfg job`)."""
    return next((a for a in _plain_words(args) if "=" not in a and not a.startswith("~")), None)


def _check_train_words(rest: list[str]) -> None:
    """`dgft train sudoku`: Hydra would answer with a grammar error; say what was probably meant."""
    stray = _stray(rest)
    if stray is not None:
        hint = f"resume={stray}" if Path(stray).is_dir() else f"recipe={stray}"
        _exit(f"dgft train: error: {stray!r} is not a key=value override; did you mean {hint}?")


def _run_comes_first(command: str, rest: list[str]) -> None:
    """`dgft eval limit=1 RUN`: Hydra would call the path a grammar error; say where the run goes instead."""
    stray = _stray(rest)
    if stray is not None and command == "eval" and Path(stray).is_file():
        _exit(f"dgft eval: error: {stray!r} is not a key=value override; did you mean data={stray}?")
    if stray is not None:
        _exit(f"dgft {command}: error: {stray!r} is not a key=value override; the run directory comes first: "
                 f"dgft {command} RUN [key=value ...] (or run={stray})")


def _remove_refused_record(hydra_cfg) -> None:
    """A refused resume (another recipe, a changed key, the run in use) or one with nothing to train: remove the
    `.hydra/resume-<time>/` record Hydra wrote for it, so the run's records are those of the commands that ran."""
    import shutil

    record = Path(hydra_cfg.runtime.output_dir) / str(hydra_cfg.output_subdir)
    if record.parent.name == ".hydra" and record.name.startswith("resume-"):
        shutil.rmtree(record, ignore_errors=True)


def _remove_if_empty(run_dir: Path) -> None:
    """A new run directory holding only what Hydra wrote when the run started (.hydra/, train.log): a run refused
    before it began leaves nothing behind (`dgft.train.train` removes what it wrote itself)."""
    import shutil

    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= LEFT_BY_A_REFUSAL:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in list(run_dir.absolute().parents)[:2]:  # outputs/<name>/, outputs/, if that left them empty
            if parent == Path.cwd() or any(parent.iterdir()):
                break
            parent.rmdir()


def _exit(message: str):
    """A refusal before anything ran, on stderr, with the exit status of the errors found later (2)."""
    print(message, file=sys.stderr)
    sys.exit(2)


def _quote(path: str) -> str:
    # Quoted, Hydra's override grammar reads a path as it is (unquoted, `10` or `true` would turn into a number or a
    # boolean, and `#` or `é` would not parse), but for two escapes: a quote (and the backslashes before one, or at
    # the end, doubled) and an interpolation's `${`.
    body = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), path)
    return "'" + body.replace("${", "\\${") + "'"


if __name__ == "__main__":
    main()
