"""Typed schemas for every config group, registered with Hydra's ConfigStore.

The YAML files under `recipes/` hold values; these dataclasses hold the types, the allowed keys and
one line on what each knob does. Hydra checks overrides against them when the config is composed, so
`dgft train trainer.lr=abc` or `trainer.lrr=1e-3` fail before anything runs. Range checks that types
cannot express live in `validate()`, which every recipe calls first.

Each task has a schema of its own (`TaskConfig` for Sudoku, `InfillTaskConfig` for code infilling); the
option picked in the `task` group brings it in (`recipes/task/infill.yaml` starts from `infill_schema`), so
`dgft train recipe=infill task.sizes=[4]` fails at composition like any other typo.

Example: `dgft train recipe=sudoku trainer.max_steps=200 seed=7`.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config value that composes but cannot work; the message names the key."""


# --- task -----------------------------------------------------------------------------------------
@dataclass
class TaskBase:
    """What every task schema has. `TrainRecipe.task` is typed with it, so the `task` group's option can bring in
    its own schema (a subclass); composing starts from this base (see `register`)."""

    name: str = MISSING  # which task module renders and scores examples


@dataclass
class TaskConfig(TaskBase):
    """Sudoku (`task=sudoku`)."""

    name: str = "sudoku"
    sizes: list[int] = field(default_factory=lambda: [9, 4])  # grid sizes to train on (4 and/or 9)
    size_weights: list[float] = field(default_factory=lambda: [0.8, 0.2])  # share of batches per size
    tokens: str = "cell"  # "cell": one token per (cell, digit); "digit": tokens 1..9 and position alone;
    # "text": a pretrained tokenizer's chat template and digits (dgft.tasks.sudoku.text)
    tokenizer: Optional[str] = None  # tokens=text: the tokenizer's dir or hub id (recipes: ${model.path})
    canvas_length: Optional[int] = None  # tokens=text: the canvas the answer is laid out on (${model.canvas_length})
    blank_fraction: list[float] = field(default_factory=lambda: [0.4, 0.78])  # [low, high] share of blanks per
    # training puzzle, 0 < low <= high < 1
    base_puzzles: int = 2000  # distinct generated puzzles per size; augmentation multiplies them
    heldout_puzzles: int = 200  # generated held-out puzzles per size (never trained on)
    corrupt_givens_p: float = 0.0  # share of examples whose given cells are also corrupted and scored
    sc_rules_p: float = 0.0  # share of self-conditioned examples whose first pass is fed back without the digits a
    # known peer holds (what sampler.self_conditioning_from=rules feeds in rules mode)
    solver_order_p: float = 0.0  # share of examples whose corrupted cells are those a singles solver fills last,
    # so the clean ones are what it fills first (the states a sampler passes through); 0: uniform random cells
    wrong_known_p: float = 0.0  # share of examples in which one or two of the cells the model is shown as known hold
    # a wrong digit no known peer holds, scored with the true one: a sampler's mistake, which sampler.revise undoes
    singles_weight: float = 1.0  # loss weight of the cells a naked or hidden single fixes, given the cells the
    # model is shown (givens and cells the noise left clean); 1: every scored cell weighs the same
    augment: bool = True  # random digit relabelling, row/column/band/stack swaps, transpose per example
    cache_dir: str = "~/.cache/dgft"  # generated data are cached here, keyed by seed and settings


INFILL_KINDS = ("line", "multi_line", "random_span")  # HumanEval-Infilling's span shapes (dgft.tasks.infill.corpus)


@dataclass
class InfillTaskConfig(TaskBase):
    """Code infilling (`task=infill`): spans cut from Python functions, the middle written on the canvas."""

    name: str = "infill"
    sources: list[str] = field(default_factory=lambda: ["stdlib"])  # "stdlib", dirs, .py files, saved datasets
    text_column: Optional[str] = None  # a dataset's text column (default: content, text, code or source)
    unit_column: Optional[str] = None  # rows the split keeps together (default: module, repo_name, repo, ... path)
    heldout_share: float = 0.1  # share of top-level packages held out (never trained on)
    split_seed: int = 0  # seeds the module split and the held-out spans (not the run seed: same held-out set)
    max_file_bytes: int = 256_000  # larger files are skipped (generated tables, vendored blobs)
    kinds: list[str] = field(default_factory=lambda: list(INFILL_KINDS))  # span shapes to train and evaluate on
    kind_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # share of training spans per kind
    max_lines: int = 8  # multi_line spans take 2..max_lines lines
    max_span_chars: int = 128  # random_span spans take 1..max_span_chars characters
    context_chars: int = 1000  # characters kept around the enclosing function
    max_side_chars: int = 2000  # at most this many characters of prefix, and of suffix
    # How the encoder is asked: "fim": [BOS] [PRE] prefix [SUF] suffix [MID] (the tokenizer's fill-in-the-middle
    # markers); "chat": one user turn through the tokenizer's chat template (instruction, prefix, hole, suffix);
    # "auto": fim if the tokenizer has the markers, else chat if it has a chat template (dgft.tasks.infill.task)
    prompt_format: str = "auto"
    tokenizer: Optional[str] = None  # a pretrained tokenizer's dir or hub id (None: a BPE trained on the corpus)
    prompt_tokens: int = 384  # encoder prompt budget: the FIM prompt or the chat turn, prefix and suffix cut to fit
    canvas_length: int = 64  # must equal model.canvas_length (middle + its end token must fit)
    canvas_prefix_tokens: int = 0  # last prefix tokens also pinned at the start of the canvas (0: none)
    vocab_size: int = 4096  # byte-level BPE size for the embedded model (unused with `tokenizer`)
    oracle_length_p: float = 0.0  # share of training examples whose true length is given (end pinned)
    pad_weight: float = 0.1  # loss weight of the padding after the end token (the middle and the end weigh 1)
    heldout_examples: int = 500  # held-out examples per kind (fixed, drawn with split_seed)
    cache_dir: str = "~/.cache/dgft"  # corpus split and tokenizer are cached here, keyed by settings and files


TASK_SCHEMAS = {"sudoku": TaskConfig, "infill": InfillTaskConfig}


# --- model ----------------------------------------------------------------------------------------
@dataclass
class LoraConfig:
    r: int = 16  # adapter rank (> 0)
    alpha: int = 32  # the update is scaled by alpha / r (> 0; 0 would train an adapter that changes nothing)
    dropout: float = 0.0  # in [0, 1)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    target_experts: bool = False  # LoRA on the fused expert tensors too (peft target_parameters; 4-bit: LoraNF4Experts)


@dataclass
class ModelConfig:
    name: str = "tiny"  # "tiny": built from the config below; "diffusiongemma": pretrained weights
    path: Optional[str] = None  # local dir or hub id of pretrained weights (name=diffusiongemma)
    finetune: str = "full"  # "full" or "lora"
    quantize: str = "none"  # "none" or "nf4": 4-bit base, experts included (dgft.quant); LoRA only
    quant_group_size: int = 32  # nf4: experts dequantized at once inside the MoE matmul (memory vs speed)
    dtype: str = "auto"  # "auto" (bf16 where supported, else fp32), "bf16", "fp32"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    # The architecture below builds name=tiny (all > 0); name=diffusiongemma reads its own from the checkpoint.
    hidden_size: int = 128  # a multiple of num_heads
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2  # divides num_heads (grouped-query attention)
    head_dim: int = 32  # even (rotary embeddings rotate dimension pairs)
    intermediate_size: int = 256  # dense MLP width
    num_experts: int = 1  # DiffusionGemma always has a MoE block; 1 expert is the near-dense minimum
    top_k_experts: int = 1  # experts per token, at most num_experts
    moe_intermediate_size: int = 128
    canvas_length: int = 81  # tokens the decoder denoises at once (must fit the task's answer)
    structured_init: bool = True  # tiny model: start task token embeddings from the task's structure
    structured_attention: bool = False  # tiny model, Sudoku cell tokens: start three heads per layer as row,
    # column and box lookups (SudokuTask.init_attention)
    lora: LoraConfig = field(default_factory=LoraConfig)


# --- noise and loss -------------------------------------------------------------------------------
@dataclass
class NoiseConfig:
    kind: str = "uniform"  # "uniform" (DiffusionGemma's: random tokens) or "mask" (absorbing state)
    support: str = "answer"  # uniform noise draws from the task's answer tokens ("answer") or the vocab
    eps: float = 1e-3  # t ~ U(eps, 1)
    t_power: float = 1.0  # k: t = eps + (1 - eps) u^(1/k); 1: uniform, 2: density rising with t (more noise)
    loss_weight: str = "flat"  # "flat" cross-entropy, or "inv_t" (1/t, MDLM-style, for kind=mask)
    self_conditioning_p: float = 0.5  # probability an example gets a no-grad first pass as self-conditioning
    self_conditioning_passes: int = 1  # up to this many no-grad passes, each reading the one before; each batch
    # draws its number from 1..N (a sampler with sampler.passes > 1 runs such chains)
    encoder_ar_weight: float = 0.0  # weight of the autoregressive loss on the encoder's prompt
    known_in_prompt: bool = False  # uncorrupted positions also go into the prompt (pair with sampler.reprompt)


# --- trainer --------------------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    max_steps: int = 1000
    # Stop after this many minutes in the training loop, counted over resumes (0: no limit). The cosine then
    # follows the share of this time used when that is ahead of the share of max_steps done, so it ends at
    # its floor when the time is up; such a schedule depends on the clock, so resume is no longer bitwise.
    time_limit_min: float = 0.0
    batch_size: int = 64  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (loss normalised over all of them)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # clip the gradient norm to this (> 0: 0 would zero every step; inf: no clipping)
    eval_every: int = 250  # steps between held-out evaluations (0: never)
    eval_puzzles: int = 64  # held-out puzzles (infill: examples) per periodic evaluation (> 0 unless eval_every=0)
    ckpt_every: int = 500  # steps between checkpoints (0: only the final one)
    keep_last: int = 2  # checkpoints kept (>= 1: the newest valid one is never deleted)
    optimizer: str = "adamw"  # "adamw" (torch, fused on CUDA), "paged_adamw_8bit" (bitsandbytes; CUDA only) or "muon"
    # (torch's Muon on the hidden weight matrices, AdamW on the rest: dgft.optim)
    muon_lr: float = 0.0  # optimizer=muon: the matrices' learning rate (0: trainer.lr, as the rest has)
    log_every: int = 10  # steps between logged training rows (> 0; step 1 is always logged); a row's loss is its
    # step's (not the interval's mean), its tokens_per_s counts every prompt and canvas token trained on, over the
    # training time alone (not the periodic checks' or checkpoints')
    num_threads: int = 0  # torch CPU threads (0: torch's default)
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights (dgft.ema)


# --- sampler --------------------------------------------------------------------------------------
@dataclass
class SamplerConfig:
    steps: int = 64  # most denoising steps; each accepts at least one position
    acceptance: str = "entropy"  # "entropy" (DiffusionGemma's bound), "confidence", "fixed"
    entropy_bound: float = 0.1  # accept lowest-entropy tokens while sum - max <= bound
    confidence: float = 0.9  # accept tokens with probability >= this ("confidence")
    temperature: float = 0.0  # 0: argmax of the constrained distribution; acceptance (entropy, confidence, the order
    # of `fixed`) reads the model's own probabilities at 0 and the tempered ones above 0 (near 0, nearly one-hot)
    self_conditioning: bool = True  # feed the previous step's logits back, as in training
    reprompt: bool = False  # move accepted cells into the encoder's prompt (tasks with `known_prompt`)
    views: int = 1  # clamped/rules: average the model over this many symmetric forms of each puzzle (Sudoku)
    view_batch: int = 1  # views per model call, stacked along the batch (0: all at once); 1 on a CPU, where stacking
    # 16 views at batch 64 took 2x the time (bench/sample_views.py); recipe=sudoku_gpu stacks them all
    passes: int = 1  # decoder passes per step, each reading the one before as self-conditioning (needs it on)
    fill_forced: bool = False  # rules mode: before each step, fill every open cell the rules leave one digit (a naked
    # single), wave after wave, without a model call (the plain sampler takes them first too, a call each)
    revise: float = 0.0  # > 0 (uniform noise): each step reopens the accepted, unpinned position whose token the
    # model now gives the lowest probability, if below this (task.wrong_known_p trains the doubt); 0: acceptances final
    self_conditioning_from: str = "model"  # "model": its logits as they are; "rules" (rules mode): without the digits
    # a peer already holds, as task.sc_rules_p trains (dgft.sampling)
    batch_size: int = 64  # puzzles (or infill examples) sampled at once
    modes: list[str] = field(default_factory=lambda: ["free", "clamped", "rules"])  # free: nothing pinned; clamped:
    # givens pinned, cells restricted to digits; rules: clamped, and digits a peer holds forbidden (Sudoku)


# --- top level ------------------------------------------------------------------------------------
@dataclass
class TrainRecipe:
    name: str = "sudoku"  # names the run directory outputs/<name>/<timestamp>
    seed: int = 0  # seeds python, numpy, torch and the data generator
    device: str = "auto"  # "auto", "cpu", "cuda"
    resume: Optional[str] = None  # a run dir to continue from its newest valid checkpoint, or "auto"
    task: TaskBase = field(default_factory=TaskConfig)  # the schema of the task picked (Sudoku by default)
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


@dataclass
class SamplerOverrides:
    """Eval-time overrides of a run's sampler settings; None keeps the run's value."""

    steps: Optional[int] = None
    acceptance: Optional[str] = None
    entropy_bound: Optional[float] = None
    confidence: Optional[float] = None
    temperature: Optional[float] = None
    self_conditioning: Optional[bool] = None
    reprompt: Optional[bool] = None
    views: Optional[int] = None
    view_batch: Optional[int] = None
    self_conditioning_from: Optional[str] = None
    passes: Optional[int] = None
    revise: Optional[float] = None
    fill_forced: Optional[bool] = None
    batch_size: Optional[int] = None
    modes: Optional[list[str]] = None


@dataclass
class EvalRecipe:
    run: str = MISSING  # run directory written by `dgft train`, or an export (`dgft export`; needs data=)
    data: Optional[str] = None  # puzzle file (Sudoku) or problems file (infill); None: the run's own held-out split
    name: Optional[str] = None  # result name (RUN/eval/<name>.json); default: the data file's stem, and with
    # `checkpoint` the checkpoint's name after it (heldout_step-000500), so the final model's results stay put
    on_error: str = "raise"  # bad lines in `data`: "raise" or "skip" (skipped lines are counted)
    limit: int = 0  # evaluate only the first N puzzles (0: all)
    batch_by: str = "size"  # Sudoku: which puzzles share a sampling batch: "size" (one grid size), or "givens" (one
    # number of givens too: puzzles/s and tokens/s measured per number of givens, no row idles while the batch's
    # emptier puzzles finish; smaller batches, each puzzle drawing its own noise as with "size")
    baseline: Optional[bool] = None  # also run the sampler with the run's model before training (Sudoku, rules
    # mode); None: true for a run, false for an export (which does not carry the model before training)
    checkpoint: Optional[str] = None  # evaluate this checkpoint (a dir, or step-N of the run), not the final weights
    overwrite: bool = False  # replace RUN/eval/<name>.* made with other settings (without: refused, naming them)
    seed: int = 0  # seeds the sampler's noise: each puzzle's or example's own, with its place in the file
    device: str = "auto"  # "auto" (a GPU when there is one), "cpu", "cuda"
    num_threads: int = 0  # torch's CPU threads (0: its default, one per core); one per process on a shared machine
    plot: bool = True  # write a PNG of one puzzle being denoised (Sudoku)
    samples: int = 1  # infill: samples per problem; pass@k (unbiased) for each k in 1, 10, 100 up to it
    rerank: bool = False  # infill: also report the first sample whose window (prefix + middle + suffix), or
    # failing that its enclosing function, compiles
    workers: int = 2  # infill: test programs run in the sandbox at once (HumanEval data)
    isolation: str = "auto"  # infill: the sandbox's isolation (dgft.sandbox): "auto" (namespaces where the kernel
    # allows them; without, a user who is not root runs them under the audit hook and seccomp, and root is refused),
    # "namespaces", or "process" (the audit hook and seccomp alone, also as root: only for code you trust)
    sampler: SamplerOverrides = field(default_factory=SamplerOverrides)  # overrides of the run's sampler


@dataclass
class ExportRecipe:
    run: str = MISSING  # run directory written by `dgft train`
    out: Optional[str] = None  # default RUN/export; elsewhere: a new or empty directory, or an earlier export
    checkpoint: Optional[str] = None  # export this checkpoint (a dir, or step-N of the run), not the final weights
    atol: float = 1e-4  # max |merged - adapter| logit difference accepted
    max_check_gb: float = 4.0  # 4-bit runs: compare logits only when the base checkpoint is at most this big
    merge_into: str = "dequantized"  # 4-bit runs: "dequantized" (the 4-bit weights the run trained on, dequantized,
    # all in bf16 as training held them: the model the run evaluated) or "base" (the unquantized base: another model)
    device: str = "cpu"  # where the run's own model runs for the checks ("cpu", "cuda", "auto")


def register() -> None:
    cs = ConfigStore.instance()
    # Composition starts from the bare task base, which the `task` option's schema then extends; code that
    # builds a TrainRecipe directly (tests, `typed_train_config`) gets a Sudoku task by default.
    cs.store(name="train_schema", node=TrainRecipe(task=TaskBase()))
    for name, schema in TASK_SCHEMAS.items():
        cs.store(group="task", name=f"{name}_schema", node=schema)
    cs.store(name="eval_schema", node=EvalRecipe)
    cs.store(name="export_schema", node=ExportRecipe)


def typed_train_config(saved, source=None, missing: str = "fill", recorded=None, may_fill: tuple = ()) -> DictConfig:
    """A saved train config (RUN/config.yaml, named by `source` in errors) typed again with the schema of its task.

    A value of the wrong type is a ConfigError naming the key. A key the file lacks (an edit, or a run from before
    the setting) and a key this version does not know (a run from an older dgft, a setting since removed):
    - `missing="fill"` (an evaluation or export) takes the defaults and drops the unknown keys, and says so on stderr;
      `"quiet"` does the same without a word (a config built from a few keys, as the benches build one);
    - `"refuse"` (a resume, which would train differently) is a ConfigError listing them, but for the keys in
      `may_fill` (those a resume may change: their defaults, or the command line's values), with the values
      `recorded` (a (path, config) pair: Hydra's record of the command, RUN/.hydra/config.yaml) gives them, else
      their defaults."""
    where = f"{source}: " if source else ""
    schema = TASK_SCHEMAS.get(OmegaConf.select(saved, "task.name") or "sudoku")
    if schema is None:
        raise ConfigError(f"{where}task.name={saved.task.name!r}: expected one of {', '.join(TASK_SCHEMAS)}")
    typed = OmegaConf.structured(TrainRecipe(task=schema()))
    unknown = unknown_settings(saved)
    if unknown and missing == "refuse":
        raise ConfigError(f"{where}{unknown[0]}: not a setting of this version of dgft (written by another version? a "
                          "resumed run keeps its saved config)")
    if unknown:
        saved = OmegaConf.create(OmegaConf.to_container(saved))  # a copy: the caller's config stays as it was read
        for key in unknown:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(saved, parent) if parent else saved
            del node[leaf]
        if missing == "fill":
            print(f"{where}{', '.join(unknown)}: not a setting of this version of dgft; left out", file=sys.stderr)
    try:
        merged = OmegaConf.merge(typed, saved)
    except (OmegaConfBaseException, ValueError) as err:  # a wrong type
        raise ConfigError(f"{where}{merge_problem(err)} (written by another version of dgft? a resumed run keeps its "
                          "saved config)") from err
    lacking = [key for key in _leaf_keys(typed) if OmegaConf.select(saved, key, default=_ABSENT) is _ABSENT
               and not (missing == "refuse" and key in may_fill)]
    if lacking and missing != "quiet":
        shown = lacking[:8]
        more = f" and {len(lacking) - len(shown)} more" if len(lacking) > len(shown) else ""
        defaults = ", ".join(f"{k}={OmegaConf.select(typed, k)}" for k in shown) + more
        if missing == "refuse":
            found = _recorded_values(recorded, shown)
            values = (f"as {recorded[0]} records them: {found}" if found else f"the defaults: {defaults}")
            raise ConfigError(f"{where}no {', '.join(shown)}{more} (edited, or written by an older dgft?); a resumed "
                              f"run trains with its saved config, so put them back ({values})")
        print(f"{where}no {', '.join(shown)}{more}; using the defaults: {defaults}", file=sys.stderr)
    return merged


def unknown_settings(saved) -> list[str]:
    """Dotted keys of a saved train config that this version of dgft does not know ([] when its task is unknown)."""
    schema = TASK_SCHEMAS.get(OmegaConf.select(saved, "task.name") or "sudoku")
    return [] if schema is None else _unknown_keys(OmegaConf.structured(TrainRecipe(task=schema())), saved)


def _unknown_keys(typed, saved, prefix: str = "") -> list[str]:
    """Dotted keys of `saved` that the structured config `typed` does not have (inside dict-valued fields: none)."""
    out = []
    if not isinstance(saved, DictConfig):
        return out
    for key in saved:
        if key not in typed.keys():  # `in typed` is False for a field without a default (MISSING: `run`)
            out.append(f"{prefix}{key}")
            continue
        child = typed._get_node(key)
        if _is_section(child):
            out += _unknown_keys(child, saved._get_node(key), f"{prefix}{key}.")
    return out


def _recorded_values(recorded, keys: list[str]) -> str | None:
    """"key=value, ..." for `keys` from a (path, config) record when it holds every one of them, else None."""
    if recorded is None:
        return None
    try:
        values = [OmegaConf.select(recorded[1], key, default=_ABSENT) for key in keys]
    except OmegaConfBaseException:  # an interpolation the record cannot resolve alone
        return None
    if any(v is _ABSENT for v in values):
        return None
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values))


_ABSENT = object()


def _is_section(node) -> bool:
    """A node of a structured config that is a dataclass of settings (trainer, model.lora), not a dict-valued field."""
    return isinstance(node, DictConfig) and node._metadata.object_type not in (None, dict)


def _leaf_keys(node, prefix: str = "") -> list[str]:
    """Dotted keys of a structured config's values (a dict-valued field counts as one value)."""
    keys = []
    for key in node:
        child = node._get_node(key)
        path = f"{prefix}{key}"
        if _is_section(child):
            keys += _leaf_keys(child, path + ".")
        else:
            keys.append(path)
    return keys


def refuse_empty(cfg, keys: tuple[str, ...]) -> None:
    """`data=` or `out=` given with nothing after it (an unset shell variable, `data=$PUZZLES`) would fall back to
    the default silently (the held-out split, RUN/export): a ConfigError naming the key instead."""
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"{key}= is empty (an unset shell variable?); give a value, or drop `{key}=` for "
                              "its default")


def merge_problem(err: Exception) -> str:
    """What an OmegaConf merge onto a schema refused, in one line: "key: message" (OmegaConf's own message adds the
    key and the type on more lines), or the message alone when it names no key."""
    key = getattr(err, "full_key", None)
    why = (str(getattr(err, "msg", err)).splitlines() or [""])[0]
    return f"{key}: {why}" if key else why


# --- range checks ---------------------------------------------------------------------------------
NOISE_KINDS = ("uniform", "mask")  # uniform-state (DiffusionGemma's) and absorbing-state noise
NOISE_SUPPORTS = ("answer", "vocab")  # where uniform noise draws its tokens: the task's answer tokens, or the vocab
_CHOICES = {
    "model.name": ("tiny", "diffusiongemma"),
    "model.finetune": ("full", "lora"),
    "model.quantize": ("none", "nf4"),
    "model.dtype": ("auto", "bf16", "fp32"),
    "trainer.optimizer": ("adamw", "paged_adamw_8bit", "muon"),
    "noise.kind": NOISE_KINDS,
    "noise.support": NOISE_SUPPORTS,
    "noise.loss_weight": ("flat", "inv_t"),
    "device": ("auto", "cpu", "cuda"),
}
_POSITIVE = ["trainer.max_steps", "trainer.batch_size", "trainer.grad_accum", "trainer.lr", "trainer.max_grad_norm",
             "trainer.log_every", "trainer.keep_last", "model.canvas_length", "noise.self_conditioning_passes",
             "model.lora.r", "model.lora.alpha", "model.quant_group_size", "noise.t_power"]
_FRACTIONS = ["noise.eps", "noise.self_conditioning_p", "trainer.min_lr_ratio"]
_NON_NEGATIVE = ["trainer.weight_decay", "trainer.warmup_steps", "trainer.eval_every", "trainer.eval_puzzles",
                 "trainer.ckpt_every", "trainer.time_limit_min", "trainer.muon_lr", "trainer.num_threads",
                 "noise.encoder_ar_weight"]
# the architecture of a model built from the config (model.name=tiny); a pretrained one reads its checkpoint's
_TINY_POSITIVE = ["model.hidden_size", "model.num_layers", "model.num_heads", "model.num_kv_heads", "model.head_dim",
                  "model.intermediate_size", "model.num_experts", "model.top_k_experts", "model.moe_intermediate_size"]
_MODES = {"sudoku": ("free", "clamped", "rules"), "infill": ("free", "clamped")}
# per task: (choices, positive, fractions, non-negative) of its own keys
_TASK_CHECKS = {
    "sudoku": ({"task.tokens": ("cell", "digit", "text")}, ["task.base_puzzles", "task.heldout_puzzles"],
               ["task.corrupt_givens_p", "task.sc_rules_p", "task.solver_order_p", "task.wrong_known_p"], []),
    "infill": ({"task.prompt_format": ("auto", "fim", "chat")},
               ["task.max_file_bytes", "task.max_lines", "task.max_span_chars", "task.max_side_chars",
                "task.prompt_tokens", "task.canvas_length", "task.vocab_size", "task.heldout_examples"],
               ["task.heldout_share", "task.oracle_length_p"],
               ["task.context_chars", "task.canvas_prefix_tokens", "task.pad_weight", "task.split_seed"]),
}


_MAY_BE_INFINITE = {"trainer.max_grad_norm"}  # inf: gradients never clipped (the norm is still logged)


def check_finite(node, prefix: str = "") -> None:
    """Every float setting under `node` is a number: nan and inf pass `x > 0`- and `x < 0`-style range checks
    (`trainer.lr=inf` trained to NaN weights, `sampler.temperature=nan` sampled at random), so they are refused,
    naming the key (inf only where it has a meaning: _MAY_BE_INFINITE)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = f"{prefix}.{key}" if prefix and not isinstance(key, int) else f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, (dict, list)):
            check_finite(value, path)
        elif isinstance(value, float) and not math.isfinite(value) and not (math.isinf(value) and value > 0
                                                                            and path in _MAY_BE_INFINITE):
            raise ConfigError(f"{path}={value}: must be a finite number")


# Settings read only when another has one of some values: (key, the other, its values that read it). Given a value
# of its own while the other has none of them, a setting changes nothing, which is said (`unread_settings`). Those
# `validate` refuses instead are not listed (trainer.muon_lr without Muon, structured_attention on a pretrained model).
_ARCHITECTURE = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                 "num_experts", "top_k_experts", "moe_intermediate_size", "structured_init")
READ_ONLY_WITH = (("sampler.entropy_bound", "sampler.acceptance", ("entropy",)),
                  ("sampler.confidence", "sampler.acceptance", ("confidence",)),
                  ("model.quant_group_size", "model.quantize", ("nf4",)),
                  ("model.lora", "model.finetune", ("lora",)),
                  *((f"model.{k}", "model.name", ("tiny",)) for k in _ARCHITECTURE))  # a pretrained model's own


def unread_settings(cfg, given) -> list[str]:
    """A sentence for each setting `given(key)` says was set (a train config: away from the schema's default; an
    eval: on its command line) that nothing reads with `cfg`'s other settings (`sampler.entropy_bound` with
    `sampler.acceptance=fixed`, LoRA's settings with full fine-tuning, a pretrained model's sizes): not an error, since
    switching the other setting back reads it, but a user who set it would expect it to act."""
    said = []
    for key, other, reading in READ_ONLY_WITH:
        value = OmegaConf.select(cfg, other, default=None)
        if value is not None and value not in reading and given(key):
            said.append(f"{key} is read only with {other}={' or '.join(reading)} (this config has {other}={value}); "
                        "its value changes nothing here")
    return said


def unread_in_training(cfg) -> list[str]:
    """`unread_settings` of a composed train config, a setting counting as set when its value is not the schema's
    default (structured_init, which a pretrained model's recipe turns off: when on)."""
    schema = OmegaConf.structured(TrainRecipe(task=TASK_SCHEMAS[cfg.task.name]()))

    def given(key: str) -> bool:
        value = OmegaConf.select(cfg, key, default=None)
        if key.endswith("structured_init"):
            return bool(value)
        return value != OmegaConf.select(schema, key, default=None)

    return unread_settings(cfg, given)


def refuse_unknown(cfg, schema) -> None:
    """Keys a composed config has that its schema (a structured config) does not: added with `+key=value`, or by a
    recipe file. Nothing would read them, so a typo there would go unseen: a ConfigError naming them, and the nearest
    setting. (Hydra answers a plain `trainer.lrr=1` with "to append use +trainer.lrr=1", which leads here.)"""
    unknown = _unknown_keys(schema, cfg)
    if unknown:
        raise ConfigError(f"{not_a_setting(unknown, schema)} (a `+key=value` override or a recipe file adds keys "
                          "that nothing reads)")


def not_a_setting(keys: list[str], schema) -> str:
    """"KEYS: not a setting of dgft; did you mean NEAREST?" (the nearest of the schema's keys to the first), or, for
    another task's setting (`task.sources` on a Sudoku run), whose task it is."""
    import difflib

    task = OmegaConf.select(schema, "task.name", default=None) if "task" in schema else None
    if other := other_task_setting(keys[0], task):
        return other
    near = difflib.get_close_matches(keys[0], _leaf_keys(schema), n=1)
    return f"{', '.join(keys)}: not a setting of dgft" + (f"; did you mean {near[0]}?" if near else "")


def other_task_setting(key: str, task: str | None) -> str | None:
    """"task.sources: a setting of the infill task ..." when `key` is a task's setting, of a task other than `task`
    (None: the task is not known, so any), else None. The recipe is the way to that task: `task=infill` alone keeps
    the Sudoku recipe's own task settings, which the infill task refuses."""
    leaf = key.removeprefix("task.").split(".")[0]
    if not key.startswith("task.") or not leaf:
        return None
    tasks = [name for name, schema in TASK_SCHEMAS.items() if name != task and leaf in OmegaConf.structured(schema)]
    if not tasks:
        return None
    return (f"{key}: a setting of the {' and '.join(tasks)} task, not of the task this config trains (for a run of "
            f"that task, give recipe={tasks[0]})")


def validate(cfg: DictConfig | Any) -> None:
    """Range and consistency checks on a composed train config; raises ConfigError naming the key."""
    get = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    check_finite({k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
                  for k in cfg if k not in ("hydra", "sampler")})  # the sampler's: check_sampler, below
    task = get("task.name")
    if task not in TASK_SCHEMAS:
        raise ConfigError(f"task.name={task!r}: expected one of {', '.join(TASK_SCHEMAS)}")
    if isinstance(cfg.task, DictConfig) and OmegaConf.get_type(cfg.task) not in (TASK_SCHEMAS[task], dict):
        raise ConfigError(f"task.name={task}: pick a task with `task={task}` (or a recipe), which brings its "
                          f"settings, rather than renaming the {OmegaConf.get_type(cfg.task).__name__} settings")
    refuse_unknown(cfg, OmegaConf.structured(TrainRecipe(task=TASK_SCHEMAS[task]())))
    choices, positive, fractions, non_negative = _TASK_CHECKS[task]
    for key, allowed in {**_CHOICES, **choices}.items():
        if get(key) not in allowed:
            raise ConfigError(f"{key}={get(key)!r}: expected one of {', '.join(allowed)}")
    for key in _POSITIVE + positive:
        if not get(key) > 0:
            raise ConfigError(f"{key}={get(key)!r}: must be > 0")
    for key in _NON_NEGATIVE + non_negative:
        if get(key) < 0:
            raise ConfigError(f"{key}={get(key)!r}: must be >= 0")
    for key in _FRACTIONS + fractions:
        if not 0 <= get(key) <= 1:
            raise ConfigError(f"{key}={get(key)!r}: must be in [0, 1]")
    if not 0 <= get("seed") < 2**32:  # numpy's range
        raise ConfigError(f"seed={get('seed')!r}: must be in [0, 2**32)")
    if isinstance(get("task.cache_dir"), str) and not get("task.cache_dir").strip():  # it went into the working dir
        raise ConfigError("task.cache_dir= is empty (an unset shell variable?); give a directory, or drop "
                          "`task.cache_dir=` for its default")
    # a model from scratch that never learns self-conditioning; not checked on resume (a run saved before trains on)
    sc_untrained = get("model.name") == "tiny" and not get("noise.self_conditioning_p") and not get("resume")
    check_sampler(cfg.sampler, task, get("noise.kind"), sc_untrained=sc_untrained)
    if get("noise.loss_weight") == "inv_t" and not get("noise.eps") > 0:
        raise ConfigError(f"noise.eps={get('noise.eps')}: must be > 0 with noise.loss_weight=inv_t (1/t at t = 0)")
    if get("noise.loss_weight") == "inv_t" and get("noise.t_power") != 1:
        raise ConfigError(f"noise.t_power={get('noise.t_power')}: noise.loss_weight=inv_t is MDLM's ELBO weight for t "
                          "drawn uniformly; with another density of t it weighs the ELBO wrongly (set noise.t_power=1 "
                          "or noise.loss_weight=flat)")
    if not 0 <= get("trainer.ema_decay") < 1:
        raise ConfigError(f"trainer.ema_decay={get('trainer.ema_decay')!r}: must be in [0, 1) (0: no average)")
    if get("trainer.eval_every") and not get("trainer.eval_puzzles"):
        raise ConfigError(f"trainer.eval_puzzles=0: trainer.eval_every={get('trainer.eval_every')} would evaluate on "
                          "no puzzles; set trainer.eval_every=0 to turn periodic evaluation off")
    if not 0 <= get("model.lora.dropout") < 1:
        raise ConfigError(f"model.lora.dropout={get('model.lora.dropout')!r}: must be in [0, 1)")
    (_validate_sudoku if task == "sudoku" else _validate_infill)(get)
    _validate_model(get)


_SAMPLER_CHOICES = {"acceptance": ("entropy", "confidence", "fixed"), "self_conditioning_from": ("model", "rules")}
_SAMPLER_POSITIVE = ["steps", "batch_size", "views", "passes"]
_SAMPLER_NON_NEGATIVE = ["temperature", "entropy_bound", "view_batch"]


def check_sampler_values(sampler) -> None:
    """The range checks of the sampler's own settings, whatever the task: `check_sampler`'s first, and
    `dgft.sampling.sample`'s for callers that build settings themselves. A key `sampler` lacks is not checked
    (the sampler takes its default). Raises ConfigError naming the key."""
    def get(key):
        if isinstance(sampler, DictConfig):
            return OmegaConf.select(sampler, key, default=None)
        return sampler.get(key) if isinstance(sampler, dict) else getattr(sampler, key, None)

    if isinstance(sampler, (DictConfig, dict)):  # every float setting, the ones checked below and the rest
        check_finite(OmegaConf.to_container(sampler, resolve=True) if isinstance(sampler, DictConfig)
                     else dict(sampler), "sampler")
    else:
        check_finite({k: get(k) for k in (*_SAMPLER_CHOICES, *_SAMPLER_POSITIVE, *_SAMPLER_NON_NEGATIVE,
                                          "confidence", "revise")}, "sampler")
    for key, allowed in _SAMPLER_CHOICES.items():
        if get(key) is not None and get(key) not in allowed:
            raise ConfigError(f"sampler.{key}={get(key)!r}: expected one of {', '.join(allowed)}")
    for key in _SAMPLER_POSITIVE:
        if get(key) is not None and not get(key) > 0:
            raise ConfigError(f"sampler.{key}={get(key)!r}: must be > 0")
    for key in _SAMPLER_NON_NEGATIVE:
        if get(key) is not None and get(key) < 0:
            raise ConfigError(f"sampler.{key}={get(key)!r}: must be >= 0")
    if get("confidence") is not None and not 0 < get("confidence") <= 1:
        raise ConfigError(f"sampler.confidence={get('confidence')!r}: must be in (0, 1] (acceptance=confidence "
                          "takes positions at least this probable)")
    if get("revise") is not None and not 0 <= get("revise") < 1:
        raise ConfigError(f"sampler.revise={get('revise')!r}: must be in [0, 1) (0: acceptances are final)")


def check_sampler(sampler, task: str, noise_kind: str, sc_untrained: bool = False) -> None:
    """Range checks on sampler settings: a train config's `sampler`, or a run's merged with `dgft eval`'s
    overrides (the same keys, the same messages); raises ConfigError naming the key. `sc_untrained`: the model was
    trained from scratch without self-conditioning, so the weights that read it never learnt."""
    get = lambda key: OmegaConf.select(sampler, key)  # noqa: E731
    if sc_untrained and get("self_conditioning"):
        raise ConfigError("sampler.self_conditioning=true: with noise.self_conditioning_p=0 a model trained from "
                          "scratch never reads self-conditioning, so the weights that read it keep their random "
                          "start; set sampler.self_conditioning=false (and sampler.passes=1)")
    check_sampler_values(sampler)
    if get("revise") > 0 and noise_kind != "uniform":
        raise ConfigError(f"sampler.revise={get('revise')}: needs noise.kind=uniform (a mask-noise model never "
                          "scores an unmasked token); set sampler.revise=0")
    modes = list(get("modes"))
    if not modes or any(m not in _MODES[task] for m in modes):
        raise ConfigError(f"sampler.modes={modes}: task {task} samples in {', '.join(_MODES[task])}"
                          + (" (infilling has no rules)" if task == "infill" else ""))
    if len(set(modes)) != len(modes):
        raise ConfigError(f"sampler.modes={modes}: each mode once (a mode listed twice is sampled twice and "
                          "reported once)")
    if task == "infill":
        if get("reprompt"):
            raise ConfigError("sampler.reprompt=true: Sudoku only (an infill prompt has no place for accepted tokens)")
        if get("views") > 1:
            raise ConfigError(f"sampler.views={get('views')}: Sudoku only (code has no symmetric views)")
        if get("self_conditioning_from") != "model":
            raise ConfigError(f"sampler.self_conditioning_from={get('self_conditioning_from')}: code has no rules; "
                              "use model")
    # settings the sampler would silently ignore (dgft.sampling)
    if get("passes") > 1 and not get("self_conditioning"):
        raise ConfigError(f"sampler.passes={get('passes')}: each pass after the first reads the one before as "
                          "self-conditioning, and sampler.self_conditioning=false; set sampler.passes=1 or "
                          "sampler.self_conditioning=true")
    if get("self_conditioning_from") == "rules" and not get("self_conditioning"):
        raise ConfigError("sampler.self_conditioning_from=rules: shapes the self-conditioning that "
                          "sampler.self_conditioning=false turns off; set sampler.self_conditioning_from=model or "
                          "sampler.self_conditioning=true")
    for key, value in (("fill_forced", "true"), ("self_conditioning_from", "rules")):
        if str(get(key)).lower() == value and "rules" not in modes:
            raise ConfigError(f"sampler.{key}={value}: acts in rules mode only, and sampler.modes={modes} has none; "
                              f"set sampler.{key}={'false' if value == 'true' else 'model'}")


def _validate_sudoku(get) -> None:
    sizes, weights = list(get("task.sizes")), list(get("task.size_weights"))
    if not sizes or any(n not in (4, 9) for n in sizes) or len(set(sizes)) != len(sizes):
        raise ConfigError(f"task.sizes={sizes}: distinct sizes, each 4 or 9")
    if get("task.sc_rules_p") and not get("noise.self_conditioning_p"):
        raise ConfigError(f"task.sc_rules_p={get('task.sc_rules_p')}: shapes the self-conditioning of training "
                          "examples, and noise.self_conditioning_p=0 gives none; set task.sc_rules_p=0")
    if len(weights) != len(sizes) or any(w < 0 for w in weights) or not 0 < sum(weights) < math.inf:
        raise ConfigError(f"task.size_weights={weights}: one non-negative weight per entry of task.sizes (their sum "
                          "finite and > 0)")
    if get("task.tokens") == "text":
        if not get("task.tokenizer"):
            raise ConfigError("task.tokenizer: task.tokens=text needs the pretrained tokenizer (dir or hub id)")
        if get("task.canvas_length") != get("model.canvas_length"):
            raise ConfigError(f"task.canvas_length={get('task.canvas_length')}: must equal model.canvas_length="
                              f"{get('model.canvas_length')}")
    answer = max(sizes) ** 2
    if get("model.canvas_length") < answer:
        raise ConfigError(f"model.canvas_length={get('model.canvas_length')}: shorter than the task's answer "
                          f"({answer} cells for a {max(sizes)}x{max(sizes)} grid)")
    blanks = list(get("task.blank_fraction"))
    if len(blanks) != 2 or not 0 < blanks[0] <= blanks[1] < 1:
        raise ConfigError(f"task.blank_fraction={blanks}: need [low, high] with 0 < low <= high < 1")
    for n in sizes:  # the share of blanks is rounded to whole cells (as data._givens_range): none, nothing to learn
        if round(n * n * (1 - blanks[0])) >= n * n:
            raise ConfigError(f"task.blank_fraction={blanks}: some {n}x{n} puzzles would have no blank cell (a share "
                              f"of {blanks[0]} of its {n * n} cells rounds to none); raise the low end")
    if not get("task.singles_weight") > 0:
        raise ConfigError(f"task.singles_weight={get('task.singles_weight')}: must be > 0 "
                          "(1 weighs every cell the same)")
    if get("task.tokens") == "text" and get("sampler.views") > 1:
        raise ConfigError(f"sampler.views={get('sampler.views')}: views need tokens=cell or tokens=digit (a text "
                          "answer is not laid out by cell); set sampler.views=1")
    if get("task.tokens") == "text" and get("task.sc_rules_p"):
        raise ConfigError("task.sc_rules_p: tokens=text lays the answer out as text; the rules need tokens=cell or "
                          "tokens=digit")
    if get("task.tokens") == "text" and get("task.solver_order_p"):
        raise ConfigError("task.solver_order_p: tokens=text lays the answer out as text; a solving order needs "
                          "tokens=cell or tokens=digit")
    if get("task.wrong_known_p") and get("noise.kind") == "mask":
        raise ConfigError("task.wrong_known_p: needs noise.kind=uniform (mask noise scores only the masked cells, so a "
                          "wrong digit shown as known is never scored; set task.wrong_known_p=0)")
    if get("task.tokens") == "text" and get("task.wrong_known_p"):
        raise ConfigError("task.wrong_known_p: tokens=text lays the answer out as text; wrong digits that keep the "
                          "rules need tokens=cell or tokens=digit")
    if get("model.structured_attention") and get("task.tokens") != "cell":
        raise ConfigError(f"model.structured_attention=true: the row, column and box heads are fitted to cell tokens; "
                          f"task.tokens={get('task.tokens')} has none (set model.structured_attention=false)")
    if get("task.tokens") == "text" and get("task.singles_weight") != 1:
        raise ConfigError("task.singles_weight: tokens=text lays the answer out as text; weighting cells needs "
                          "tokens=cell or tokens=digit")


def _validate_infill(get) -> None:  # its sampler's: check_sampler
    if get("trainer.eval_every") and not get("task.heldout_share"):
        raise ConfigError(f"task.heldout_share=0: trainer.eval_every={get('trainer.eval_every')} would check on no "
                          "held-out code (and `dgft eval RUN` would find none); hold some out, or set "
                          "trainer.eval_every=0")
    if get("noise.known_in_prompt"):
        raise ConfigError("noise.known_in_prompt=true: Sudoku only (an infill prompt has no place for accepted "
                          "tokens)")
    if get("model.structured_attention"):
        raise ConfigError("model.structured_attention=true: Sudoku only (row, column and box heads); set it false")
    kinds, weights = list(get("task.kinds")), list(get("task.kind_weights"))
    if not kinds or len(set(kinds)) != len(kinds) or any(k not in INFILL_KINDS for k in kinds):
        raise ConfigError(f"task.kinds={kinds}: distinct span kinds among {', '.join(INFILL_KINDS)}")
    if len(weights) != len(kinds) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"task.kind_weights={weights}: one non-negative weight per entry of task.kinds, not all 0")
    if not list(get("task.sources")):
        raise ConfigError("task.sources=[]: name at least one source (stdlib, a directory, a .py file, a dataset)")
    if get("task.heldout_share") >= 1:
        raise ConfigError(f"task.heldout_share={get('task.heldout_share')}: must be < 1 (something must be trained on)")
    if get("task.max_lines") < 2:
        raise ConfigError(f"task.max_lines={get('task.max_lines')}: a multi_line span takes at least 2 lines")
    if get("task.canvas_length") != get("model.canvas_length"):
        raise ConfigError(f"task.canvas_length={get('task.canvas_length')} differs from model.canvas_length="
                          f"{get('model.canvas_length')}: set one (recipe=infill sets the model's from the task's)")
    if get("task.canvas_length") < get("task.canvas_prefix_tokens") + 2:
        raise ConfigError(f"task.canvas_length={get('task.canvas_length')}: needs room for task.canvas_prefix_tokens="
                          f"{get('task.canvas_prefix_tokens')}, one middle token and [EOS]")
    if get("task.prompt_tokens") < 8:
        raise ConfigError(f"task.prompt_tokens={get('task.prompt_tokens')}: at least 8 ([BOS] [PRE] [SUF] [MID] "
                          "and some context)")
    if get("task.vocab_size") < 268 and not get("task.tokenizer"):
        raise ConfigError(f"task.vocab_size={get('task.vocab_size')}: a byte-level BPE needs at least 268 "
                          "(12 special tokens and the 256 bytes)")
    if get("model.name") != "tiny" and not get("task.tokenizer"):
        raise ConfigError(f"task.tokenizer: model.name={get('model.name')} reads its own tokenizer; set "
                          "task.tokenizer to the model's directory (model.path). Without fill-in-the-middle markers "
                          "it is asked through its chat template (task.prompt_format)")


def _validate_model(get) -> None:
    if get("noise.loss_weight") == "inv_t" and get("noise.kind") != "mask":
        raise ConfigError("noise.loss_weight=inv_t: only meaningful with noise.kind=mask")
    if get("model.name") == "diffusiongemma" and not get("model.path"):
        raise ConfigError("model.path: model=diffusiongemma needs a local directory or hub id of the weights")
    if get("model.name") == "tiny" and get("model.path"):
        raise ConfigError(f"model.path={get('model.path')}: model.name=tiny is built from its config and never reads "
                          "weights; for a pretrained model pick model=diffusiongemma")
    if get("noise.kind") == "mask" and get("noise.support") != "answer":
        raise ConfigError(f"noise.support={get('noise.support')}: chooses the random tokens of uniform noise, and "
                          "noise.kind=mask corrupts to the mask token; leave noise.support=answer")
    if get("model.structured_attention") and get("model.name") != "tiny":
        raise ConfigError(f"model.structured_attention=true: sets the starting weights of a model built from a config "
                          f"(model=tiny or small); model.name={get('model.name')} keeps its pretrained weights: set "
                          "model.structured_attention=false (for the released DiffusionGemma: recipe=sudoku_lora)")
    if get("model.quantize") != "none":
        import torch

        if get("model.finetune") != "lora":
            raise ConfigError(f"model.quantize={get('model.quantize')}: a 4-bit base is frozen; set model.finetune=lora")
        if get("model.name") != "tiny" and not torch.cuda.is_available():
            raise ConfigError(f"model.quantize={get('model.quantize')}: 4-bit training of a pretrained model needs a "
                              f"CUDA GPU, none found (the embedded model=tiny also runs it on the CPU)")
    if get("model.finetune") == "lora" and get("model.lora.target_experts") and get("model.lora.dropout"):
        raise ConfigError(f"model.lora.dropout={get('model.lora.dropout')}: LoRA on the fused experts "
                          "(model.lora.target_experts=true) has no dropout (peft's target_parameters refuses it, "
                          "and dgft's 4-bit experts follow peft); set model.lora.dropout=0")
    if get("trainer.optimizer") == "muon" and get("model.finetune") == "lora":
        raise ConfigError("trainer.optimizer=muon: for full fine-tuning only (model.finetune=lora trains rank-r "
                          "factors, which Muon was not made for and dgft has not measured it on); use adamw")
    if get("trainer.muon_lr") and get("trainer.optimizer") != "muon":
        raise ConfigError(f"trainer.muon_lr={get('trainer.muon_lr')!r}: only trainer.optimizer=muon has it (it is "
                          f"{get('trainer.optimizer')!r})")
    if get("trainer.optimizer") == "paged_adamw_8bit":
        import torch

        if not torch.cuda.is_available() or get("device") == "cpu":
            raise ConfigError("trainer.optimizer=paged_adamw_8bit: needs a CUDA GPU; use trainer.optimizer=adamw")
    if get("model.name") == "tiny":
        _validate_architecture(get)


def _validate_architecture(get) -> None:
    """The shape of a model built from the config (model.name=tiny), checked before transformers builds it."""
    for key in _TINY_POSITIVE:
        if not get(key) > 0:
            raise ConfigError(f"{key}={get(key)!r}: must be > 0")
    heads, kv_heads = get("model.num_heads"), get("model.num_kv_heads")
    if get("model.hidden_size") % heads:
        raise ConfigError(f"model.hidden_size={get('model.hidden_size')}: must be divisible by model.num_heads={heads}")
    if heads % kv_heads:
        raise ConfigError(f"model.num_kv_heads={kv_heads}: must divide model.num_heads={heads} (each key/value head "
                          "serves a group of query heads)")
    if get("model.head_dim") % 2:
        raise ConfigError(f"model.head_dim={get('model.head_dim')}: must be even (rotary embeddings rotate pairs of "
                          "dimensions)")
    if get("model.top_k_experts") > get("model.num_experts"):
        raise ConfigError(f"model.top_k_experts={get('model.top_k_experts')}: at most model.num_experts="
                          f"{get('model.num_experts')}")


# --- help -----------------------------------------------------------------------------------------
_FIELD_LINE = re.compile(r"^    (\w+): [^=#]+?(?: = (?P<default>[^#]*?))?\s*(?:#\s?(?P<comment>.*))?$")


def field_comments(cls) -> dict[str, str]:
    """Each field of a schema dataclass -> its comment in this file (continuation lines joined), for the help."""
    out, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        m = _FIELD_LINE.match(line)
        if m and not line.lstrip().startswith(("#", '"')):
            last = m.group(1)
            out[last] = (m.group("comment") or "").strip()
        elif last and line.strip().startswith("#"):
            out[last] = f"{out[last]} {line.strip().lstrip('#').strip()}".strip()
        else:
            last = None
    return out


def option_help(cls, sampler_cls=None) -> str:
    """`key=default  what it does` for every option of an eval or export schema; `sampler.*` from the sampler schema
    (its defaults are the run's own, not listed)."""
    notes = field_comments(cls)
    fields = OmegaConf.structured(cls)
    lines = []
    for name, note in notes.items():
        if name == "sampler" and sampler_cls is not None:
            continue
        value = "(required)" if OmegaConf.is_missing(fields, name) else OmegaConf.to_yaml(
            {name: fields[name]}).strip().split(": ", 1)[-1]
        lines.append(_help_line(f"{name}={value}", note))
    if sampler_cls is not None:
        lines += ["", "sampler.KEY=VALUE overrides the run's own sampler (its value in RUN/config.yaml otherwise):"]
        lines += [_help_line(f"sampler.{name}", note) for name, note in field_comments(sampler_cls).items()]
    return "\n".join(lines)


def _help_line(key: str, note: str, width: int = 110, indent: int = 30) -> str:
    import textwrap

    head = f"  {key}".ljust(indent - 1)
    if not note:
        return head
    if len(head) >= indent:  # a long key on a line of its own
        return head + "\n" + textwrap.fill(note, width, initial_indent=" " * indent, subsequent_indent=" " * indent,
                                            break_on_hyphens=False)
    return textwrap.fill(note, width, initial_indent=head + " ", subsequent_indent=" " * indent, break_on_hyphens=False)
