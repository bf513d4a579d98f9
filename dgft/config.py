"""Typed schemas for every config group, registered with Hydra's ConfigStore.

The YAML files under `recipes/` hold values; these dataclasses hold the types, the allowed keys and
one line on what each knob does. Hydra checks overrides against them when the config is composed, so
`dgft train trainer.lr=abc` or `trainer.lrr=1e-3` fail before anything runs. Range checks that types
cannot express live in `validate()`, which every recipe calls first.

Example: `dgft train recipe=sudoku trainer.max_steps=200 seed=7`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that composes but cannot work; the message names the key."""


# --- task -----------------------------------------------------------------------------------------
@dataclass
class TaskConfig:
    name: str = "sudoku"  # which task module renders and scores examples
    sizes: list[int] = field(default_factory=lambda: [9, 4])  # grid sizes to train on (4 and/or 9)
    size_weights: list[float] = field(default_factory=lambda: [0.8, 0.2])  # share of batches per size
    tokens: str = "cell"  # "cell": one token per (cell, digit); "digit": tokens 1..9 and position alone
    blank_fraction: list[float] = field(default_factory=lambda: [0.4, 0.78])  # range of blanks per training puzzle
    base_puzzles: int = 2000  # distinct generated puzzles per size; augmentation multiplies them
    heldout_puzzles: int = 200  # generated held-out puzzles per size (never trained on)
    corrupt_givens_p: float = 0.0  # share of examples whose given cells are also corrupted and scored
    augment: bool = True  # random digit relabelling, row/column/band/stack swaps, transpose per example
    cache_dir: str = "~/.cache/dgft"  # generated data are cached here, keyed by seed and settings


# --- model ----------------------------------------------------------------------------------------
@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    target_experts: bool = False  # also LoRA on the fused expert tensors (peft target_parameters)


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
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 256  # dense MLP width
    num_experts: int = 1  # DiffusionGemma always has a MoE block; 1 expert is the near-dense minimum
    top_k_experts: int = 1
    moe_intermediate_size: int = 128
    canvas_length: int = 81  # tokens the decoder denoises at once (must fit the task's answer)
    structured_init: bool = True  # tiny model: start task token embeddings from the task's structure
    lora: LoraConfig = field(default_factory=LoraConfig)


# --- noise and loss -------------------------------------------------------------------------------
@dataclass
class NoiseConfig:
    kind: str = "uniform"  # "uniform" (DiffusionGemma's: random tokens) or "mask" (absorbing state)
    support: str = "answer"  # uniform noise draws from the task's answer tokens ("answer") or the vocab
    eps: float = 1e-3  # t ~ U(eps, 1)
    loss_weight: str = "flat"  # "flat" cross-entropy, or "inv_t" (1/t, MDLM-style, for kind=mask)
    self_conditioning_p: float = 0.5  # probability an example gets a no-grad first pass as self-conditioning
    encoder_ar_weight: float = 0.0  # weight of the autoregressive loss on the encoder's prompt


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
    max_grad_norm: float = 1.0
    eval_every: int = 250  # steps between held-out evaluations (0: never)
    eval_puzzles: int = 64  # held-out puzzles per periodic evaluation
    ckpt_every: int = 500  # steps between checkpoints (0: only the final one)
    keep_last: int = 2  # checkpoints kept
    optimizer: str = "adamw"  # "adamw" (torch, fused on CUDA) or "paged_adamw_8bit" (bitsandbytes; CUDA only)
    log_every: int = 10
    num_threads: int = 0  # torch CPU threads (0: torch's default)


# --- sampler --------------------------------------------------------------------------------------
@dataclass
class SamplerConfig:
    steps: int = 64  # most denoising steps; each accepts at least one position
    acceptance: str = "entropy"  # "entropy" (DiffusionGemma's bound), "confidence", "fixed"
    entropy_bound: float = 0.1  # accept lowest-entropy tokens while sum - max <= bound
    confidence: float = 0.9  # accept tokens with probability >= this ("confidence")
    temperature: float = 0.0  # 0: argmax of the constrained distribution
    self_conditioning: bool = True  # feed the previous step's logits back, as in training
    batch_size: int = 64
    modes: list[str] = field(default_factory=lambda: ["free", "clamped", "rules"])


# --- top level ------------------------------------------------------------------------------------
@dataclass
class TrainRecipe:
    name: str = "sudoku"  # names the run directory outputs/<name>/<timestamp>
    seed: int = 0  # seeds python, numpy, torch and the data generator
    device: str = "auto"  # "auto", "cpu", "cuda"
    resume: Optional[str] = None  # a run dir to continue from its newest valid checkpoint, or "auto"
    task: TaskConfig = field(default_factory=TaskConfig)
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
    batch_size: Optional[int] = None
    modes: Optional[list[str]] = None


@dataclass
class EvalRecipe:
    run: str = MISSING  # run directory written by `dgft train`
    data: Optional[str] = None  # puzzle file; None: the run's generated held-out split
    name: Optional[str] = None  # result name (RUN/eval/<name>.json); default: the data file's stem
    on_error: str = "raise"  # bad lines in `data`: "raise" or "skip" (skipped lines are counted)
    limit: int = 0  # evaluate only the first N puzzles (0: all)
    baseline: bool = True  # also run the sampler with an untrained model of the same config
    checkpoint: Optional[str] = None  # evaluate this checkpoint dir instead of the final weights
    seed: int = 0
    device: str = "auto"
    plot: bool = True  # write a PNG of one puzzle being denoised
    sampler: SamplerOverrides = field(default_factory=SamplerOverrides)  # overrides of the run's sampler


@dataclass
class ExportRecipe:
    run: str = MISSING
    out: Optional[str] = None  # default RUN/export
    checkpoint: Optional[str] = None
    atol: float = 1e-4  # max |merged - adapter| logit difference accepted
    max_check_gb: float = 4.0  # 4-bit runs: compare logits only when the base checkpoint is at most this big
    device: str = "cpu"


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainRecipe)
    cs.store(name="eval_schema", node=EvalRecipe)
    cs.store(name="export_schema", node=ExportRecipe)


# --- range checks ---------------------------------------------------------------------------------
_CHOICES = {
    "task.name": ("sudoku",),
    "task.tokens": ("cell", "digit"),
    "model.name": ("tiny", "diffusiongemma"),
    "model.finetune": ("full", "lora"),
    "model.quantize": ("none", "nf4"),
    "model.dtype": ("auto", "bf16", "fp32"),
    "trainer.optimizer": ("adamw", "paged_adamw_8bit"),
    "noise.kind": ("uniform", "mask"),
    "noise.support": ("answer", "vocab"),
    "noise.loss_weight": ("flat", "inv_t"),
    "sampler.acceptance": ("entropy", "confidence", "fixed"),
    "device": ("auto", "cpu", "cuda"),
}
_POSITIVE = ["trainer.max_steps", "trainer.batch_size", "trainer.grad_accum", "trainer.lr", "model.hidden_size",
             "model.num_layers", "model.canvas_length", "sampler.steps", "sampler.batch_size", "task.base_puzzles",
             "task.heldout_puzzles", "model.lora.r", "model.quant_group_size"]
_FRACTIONS = ["noise.eps", "noise.self_conditioning_p", "task.corrupt_givens_p", "trainer.min_lr_ratio"]
_NON_NEGATIVE = ["trainer.weight_decay", "trainer.warmup_steps", "trainer.eval_every", "trainer.ckpt_every",
                 "trainer.time_limit_min", "noise.encoder_ar_weight", "sampler.temperature", "sampler.entropy_bound"]


def validate(cfg: DictConfig | Any) -> None:
    """Range and consistency checks on a composed train config; raises ConfigError naming the key."""
    get = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    for key, choices in _CHOICES.items():
        if get(key) not in choices:
            raise ConfigError(f"{key}={get(key)!r}: expected one of {', '.join(choices)}")
    for key in _POSITIVE:
        if not get(key) > 0:
            raise ConfigError(f"{key}={get(key)!r}: must be > 0")
    for key in _NON_NEGATIVE:
        if get(key) < 0:
            raise ConfigError(f"{key}={get(key)!r}: must be >= 0")
    for key in _FRACTIONS:
        if not 0 <= get(key) <= 1:
            raise ConfigError(f"{key}={get(key)!r}: must be in [0, 1]")
    sizes, weights = list(get("task.sizes")), list(get("task.size_weights"))
    if not sizes or any(n not in (4, 9) for n in sizes):
        raise ConfigError(f"task.sizes={sizes}: each size must be 4 or 9")
    if len(weights) != len(sizes) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"task.size_weights={weights}: one non-negative weight per entry of task.sizes")
    answer = max(sizes) ** 2
    if get("model.canvas_length") < answer:
        raise ConfigError(f"model.canvas_length={get('model.canvas_length')}: shorter than the task's answer "
                          f"({answer} cells for a {max(sizes)}x{max(sizes)} grid)")
    lo, hi = list(get("task.blank_fraction"))
    if not 0 < lo <= hi < 1:
        raise ConfigError(f"task.blank_fraction=[{lo}, {hi}]: need 0 < low <= high < 1")
    if get("noise.loss_weight") == "inv_t" and get("noise.kind") != "mask":
        raise ConfigError("noise.loss_weight=inv_t: only meaningful with noise.kind=mask")
    if get("model.name") == "diffusiongemma" and not get("model.path"):
        raise ConfigError("model.path: model=diffusiongemma needs a local directory or hub id of the weights")
    if get("model.quantize") != "none":
        import torch

        if get("model.finetune") != "lora":
            raise ConfigError(f"model.quantize={get('model.quantize')}: a 4-bit base is frozen; set model.finetune=lora")
        if get("model.name") != "tiny" and not torch.cuda.is_available():
            raise ConfigError(f"model.quantize={get('model.quantize')}: 4-bit training of a pretrained model needs a "
                              f"CUDA GPU, none found (the embedded model=tiny also runs it on the CPU)")
        if get("model.lora.target_experts"):
            raise ConfigError("model.lora.target_experts=true: LoRA on 4-bit experts is not supported yet; "
                              "use model.quantize=none for expert LoRA")
    if get("trainer.optimizer") == "paged_adamw_8bit":
        import torch

        if not torch.cuda.is_available() or get("device") == "cpu":
            raise ConfigError("trainer.optimizer=paged_adamw_8bit: needs a CUDA GPU; use trainer.optimizer=adamw")
    if get("model.hidden_size") % get("model.num_heads") and get("model.name") == "tiny":
        raise ConfigError("model.hidden_size: must be divisible by model.num_heads")
