"""Solve Sudoku puzzles with a trained model: an export (`dgft export RUN`) or a run directory, in Python.

    from dgft.solve import load_solver
    solver = load_solver("outputs/sudoku/latest/export")   # or the run directory itself
    solver(["003020600900305001001806400008102900700000008006708200002609500800203009005010300"], mode="rules")
    # -> ["483921657967345821251876493548132976729564138136798245372689514814253769695417382"] (if the model solves it)

The puzzles need no solution: the sampler reads the target only at the givens, which it pins (and lists in the
prompt), so each blank's target is a placeholder. Answers are 16- or 81-character strings, '0' where a cell was
left empty (in `rules` mode, a cell whose every digit a peer already held; in any mode, one still open when the
steps ran out). The sampler is the one the model was trained for (an export's `dgft_sampler.json`, a run's
config.yaml; an export's files are checked against its export.json, as `dgft eval` checks them), with sampler
overrides as keyword arguments (`steps=40`, checked as `dgft eval` checks them); `mode` is
`free`, `clamped` or `rules` (`dgft eval` reports all three); `seed` seeds each puzzle's own noise generator, with
its place in the list, as `dgft eval` seeds a file's (the global generators are left alone). Only Sudoku with cell or
digit tokens, and only the grid sizes the model was trained on; a puzzle whose givens break a rule is refused, as
`dgft eval` refuses its line.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from omegaconf.errors import OmegaConfBaseException

from dgft.config import ConfigError, merge_problem


class Solver:
    """A model, its task and sampler settings; call it with puzzle strings (see the module docstring)."""

    def __init__(self, model, settings, device):
        from dgft.tasks import get_task

        self.model, self.settings, self.device = model, settings, device
        self.task = get_task(settings.task)

    def __call__(self, puzzles: list[str], mode: str = "rules", seed: int = 0, **sampler) -> list[str]:
        from dgft.config import SamplerConfig, check_sampler
        from dgft.sampling import MODES
        from dgft.tasks.sudoku import grid as G
        from dgft.tasks.sudoku.evaluate import run_mode
        from dgft.tasks.sudoku.io import SudokuRecord, check_record

        if mode not in MODES:
            raise ConfigError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"seed={seed!r}: a whole number in [0, 2**32)")
        if not 0 <= seed < 2**32:  # as dgft eval checks it
            raise ConfigError(f"seed={seed}: must be in [0, 2**32)")
        if "modes" in sampler:  # a sampler setting that solve does not read: one mode per call
            raise ConfigError(f"sampler option 'modes'={sampler['modes']!r}: solve samples one mode per call; pass "
                              "mode='rules' (or 'clamped', 'free')")
        unknown = sorted(set(sampler) - {f.name for f in fields(SamplerConfig)})
        if unknown:
            raise ConfigError(f"sampler option {unknown[0]!r}: not a sampler setting (dgft eval --help lists them)")
        try:
            scfg = OmegaConf.merge(OmegaConf.structured(SamplerConfig), self.settings.sampler, sampler)
        except (OmegaConfBaseException, ValueError) as err:  # a value of the wrong type: steps="abc"
            raise ConfigError(f"sampler option {merge_problem(err)}") from None
        check_sampler(scfg, "sudoku", self.settings.noise.kind)
        if isinstance(puzzles, str):  # a ValueError, as it always was
            raise ValueError("puzzles: a list of puzzle strings, not one string")
        if isinstance(puzzles, (bytes, dict)) or not hasattr(puzzles, "__iter__"):
            raise TypeError(f"puzzles: a list (or any iterable) of puzzle strings, not {type(puzzles).__name__}")
        puzzles = list(puzzles)  # a generator or a pandas Series as well
        sizes = [int(n) for n in self.settings.task.get("sizes") or G.GRID_SIDES]  # none saved: any, as eval allows
        grids = []
        for i, text in enumerate(puzzles):
            if not isinstance(text, str):
                raise TypeError(f"puzzle {i}: a string of 16 or 81 characters, not {type(text).__name__}")
            try:  # as dgft eval reads a line: a puzzle whose givens break a rule has no right answer
                grid, _ = check_record(text, None, check_solvable=False)
            except ValueError as error:
                raise ValueError(f"puzzle {i}: {error}") from None
            if G.side(grid) not in sizes:
                raise ConfigError(f"puzzle {i} is {G.side(grid)}x{G.side(grid)}, but the model was trained with "
                                  f"task.sizes={sizes}")
            grids.append(grid)
        recs = [SudokuRecord(grid, np.where(grid == 0, 1, grid), f"puzzle {i}")  # the target: read at the givens only
                for i, grid in enumerate(grids)]
        answers, _ = run_mode(self.model, self.task, recs, scfg, self.settings, mode, seed, label="solve")
        return [G.to_string(a) for a in answers]


def load_solver(path: str | Path, device: str = "auto") -> Solver:
    """A Solver for an export directory (it has `dgft_sampler.json`) or a `dgft train` run directory."""
    from dgft.export import check_export, load_export, read_settings
    from dgft.runs import load_model
    from dgft.train import pick_device

    path = Path(path)
    dev = pick_device(device)
    settings, export = read_settings(path)
    if settings.task.name != "sudoku" or settings.task.get("tokens", "cell") == "text":
        raise ConfigError(f"{path}: task {settings.task.name!r} (tokens={settings.task.get('tokens')}): "
                          "dgft.solve is for Sudoku models with cell or digit tokens")
    if export:  # every file as the export wrote it, as `dgft eval EXPORT` checks (a run's are checked on load)
        check_export(path)
    model = load_export(path, dev) if export else load_model(path, settings, device=dev)
    return Solver(model, settings, dev)
