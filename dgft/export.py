"""The export recipe: a run -> a standalone model dir. `dgft export RUN` runs `export(cfg)`.

RUN/export/ gets safetensors weights, config.json, generation_config.json, the run's tokenizer, its sampler,
noise and task settings (`dgft_sampler.json`), a model card (README.md: the source, how to load and sample, the
run's evaluations; `dgft.card`) and `export.json` (source hashes, step, measured logit differences, each exported
file's size and sha256).
A LoRA adapter is merged into its base (peft `merge_and_unload`, then the encoder re-tied to the merged
decoder layers) and checked: merged logits must equal adapter logits on a fixed batch within `atol`, and the
re-loaded export must give the same logits again. Everything runs in fp32. A LoRA run on a pretrained or a 4-bit
base is merged shard by shard instead, in the base's dtype (`export_streaming`). A second export of an unchanged
run is a no-op if the files export.json records (size, sha256) are intact, else it exports again; the directory
is written beside `out` and renamed into place (temp dirs of killed exports are removed on the next export).

Example: `dgft export outputs/sudoku/<run>`, then
`DiffusionGemmaForBlockDiffusion.from_pretrained("outputs/sudoku/<run>/export")`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dgft import checkpoint as ckpt
from dgft.cache import replace_file
from dgft.card import model_card, with_evaluations
from dgft.config import ConfigError, ExportRecipe, refuse_empty, refuse_unknown
from dgft.model import denoise, encode, retie_encoder, unwrap
from dgft.runs import (RUN_KINDS, RunError, cannot_make, checkpoint_dir, keeps_average, load_config, load_model,
                       no_weights, note_stopped_early, real_run_dir, require_final, take_lock)
from dgft.train import pick_device

SAMPLER_FILE = "dgft_sampler.json"
RECORD_FILE = "export.json"
CARD_FILE = "README.md"  # the model card (dgft.card)
EVAL_DIR = "eval"  # `dgft eval EXPORT` writes here; kept when the export is made again
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_VOCAB = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
CHECK_SEED, CHECK_BATCH, CHECK_PROMPT = 0, 2, 12
GAP_CAUSES = ("the trained model computes in bf16 with its adapter apart, the export's weights are the sum rounded "
              "to bf16, and with several experts a token near a routing tie may take another")
MERGE_INTO = ("dequantized", "base")  # a 4-bit run's adapter merged into: its 4-bit weights dequantized, the base


class ExportError(RunError):
    """The export would not reproduce the run's model (logits differ, or the adapter did not load)."""


def export(cfg) -> Path:
    # --- setup -------------------------------------------------------------------------------------
    refuse_unknown(cfg, OmegaConf.structured(ExportRecipe))  # `+foo=1`: nothing would read it
    cfg = OmegaConf.merge(OmegaConf.structured(ExportRecipe), cfg)  # a config built by hand: the schema's defaults
    if OmegaConf.is_missing(cfg, "run"):
        raise RunError("no run given: dgft export RUN [out=DIR] [checkpoint=step-N]")
    refuse_empty(cfg, ("run", "out", "checkpoint"))
    for key in ("atol", "max_check_gb"):  # before minutes of loading and merging
        if not 0 <= cfg[key] < float("inf"):
            raise ConfigError(f"{key}={cfg[key]}: must be a finite number >= 0")
    if cfg.merge_into not in MERGE_INTO:
        raise ConfigError(f"merge_into={cfg.merge_into!r}: expected {' or '.join(MERGE_INTO)}")
    run_dir = real_run_dir(Path(cfg.run))  # the card and export.json name the run, not a `latest` link to it
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: "
                       + ("a file, not a run directory" if run_dir.exists() else "no such run directory"))
    rcfg = load_config(run_dir)
    checkpoint = checkpoint_dir(run_dir, cfg.checkpoint) if cfg.checkpoint else None
    # a checkpoint's export goes beside the final model's (RUN/export_step-N), as its evaluation does
    out = Path(cfg.out) if cfg.out else run_dir / ("export" if checkpoint is None else f"export_{checkpoint.name}")
    if out.is_symlink():  # the export goes where the link points, which stays a link (renaming into place would
        out = out.resolve()  # replace the link itself)
    if checkpoint is None:
        require_final(run_dir, rcfg)
        note_stopped_early(run_dir, rcfg)
    source = source_hashes(run_dir, rcfg, checkpoint)
    if rcfg.model.get("quantize", "none") == "nf4":  # which model the export is, so another choice exports again
        source["merge_into"] = cfg.merge_into
    elif cfg.merge_into != ExportRecipe.merge_into:
        print(f"note: merge_into={cfg.merge_into} is read only for a 4-bit run (model.quantize=nf4); {run_dir} is "
              f"not one, so it changes nothing here", file=sys.stderr)
    device = pick_device(cfg.device)  # a bad device= is refused even when the export is up to date
    _remove_stale(out)
    if _recorded(out, "source") == source:
        stale = _check_outputs(out, card=False)  # the card is read on its own, and rewritten below
        refreshed = _refresh_card(out, run_dir, checkpoint) if stale is None else None
        if refreshed is not None:
            print(f"{out}: up to date" + ("; its model card's lists of evaluations brought up to date"
                                          if refreshed else ""))
            return out
        print(f"{out}: {stale or f'{CARD_FILE} is not the model card dgft wrote'}; exporting again")
    _check_out(out, run_dir)  # an up-to-date export is this run's whatever path it was made from, and is not written
    try:  # two exports to one place at once: the second is refused (they raced to rename into place)
        out.parent.mkdir(parents=True, exist_ok=True)
        held = take_lock(out.parent / f".{out.name}.lock", lambda holder: RunError(
            f"{out}: another `dgft export` (pid {holder}) is writing it now; wait for it to end"))
    except OSError as err:
        raise RunError(f"out={out}: cannot be written ({err.strerror or err}: {err.filename})") from err
    with held:
        return _write_export(cfg, rcfg, run_dir, out, checkpoint, source, device)


def _write_export(cfg, rcfg, run_dir: Path, out: Path, checkpoint: Path | None, source: dict, device) -> Path:
    """The export itself, once `out` is checked and held (`.<out>.lock` beside it): streamed shard by shard from a
    pretrained base, else loaded whole, merged, checked and saved beside `out`, then renamed into place."""
    quantized = rcfg.model.get("quantize", "none") == "nf4"
    if quantized or (rcfg.model.finetune == "lora" and rcfg.model.name != "tiny"):  # a pretrained base: streamed
        return export_streaming(cfg, rcfg, run_dir, out, checkpoint, source, device)

    # --- load, merge, check ------------------------------------------------------------------------
    model = load_model(run_dir, rcfg, checkpoint=checkpoint, device=device)
    averaged = checkpoint is not None and keeps_average(rcfg)  # load_model applied the checkpoint's average
    if rcfg.model.finetune == "lora" and not averaged:  # the average is not the adapter file's tensors
        check_adapter_loaded(model, checkpoint or run_dir / "adapter")
    model = model.float()
    prompt, mask, canvas = check_batch(unwrap(model).config, device)
    reference = check_logits(model, prompt, mask, canvas)
    merged_diff = None
    if rcfg.model.finetune == "lora":
        model = merge_adapter(model)
        merged_diff = _max_diff(reference, check_logits(model, prompt, mask, canvas))
        _require(merged_diff, cfg.atol, "merged model vs adapter")

    # --- save (beside `out`, renamed into place) ---------------------------------------------------
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        ckpt.readable_as_umask_allows(tmp)
        model.generation_config.save_pretrained(str(tmp))
        model = None  # one copy of the weights in memory at a time
        _copy_tokenizer(run_dir / "tokenizer", tmp)
        _tokenizer_loads(tmp, run_dir / "tokenizer")
        (tmp / SAMPLER_FILE).write_text(json.dumps(sampler_settings(rcfg), indent=1))

        from transformers import DiffusionGemmaForBlockDiffusion

        reloaded = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tmp), dtype=torch.float32, use_safetensors=True)
        reload_diff = _max_diff(reference, check_logits(reloaded.to(device).eval(), prompt, mask, canvas))
        _require(reload_diff, cfg.atol, "re-loaded export vs run")
        record = {"run": str(run_dir.resolve()), "source": source, "finetune": rcfg.model.finetune,
                  "checkpoint": str(checkpoint) if checkpoint else None, "step": _step(run_dir, checkpoint),
                  "checkpoint_average": averaged, "merged_max_abs_diff": merged_diff,
                  "reload_max_abs_diff": reload_diff, "atol": cfg.atol,
                  "dtype": "float32", "check_batch": {"seed": CHECK_SEED, "batch": CHECK_BATCH,
                                                      "prompt": CHECK_PROMPT, "canvas": int(canvas.shape[1])},
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        checked = _figures_hold(max(merged_diff or 0.0, reload_diff), cfg.atol)
        (tmp / CARD_FILE).write_text(model_card(run_dir, rcfg, checkpoint, record["step"], checked))
        record["outputs"] = output_hashes(tmp)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1))
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    diffs = f"merged {merged_diff:.2e}, " if merged_diff is not None else ""
    print(f"exported {run_dir} -> {out} (max |logit diff|: {diffs}re-loaded {reload_diff:.2e}; atol {cfg.atol})")
    return out


def export_streaming(cfg, rcfg, run_dir: Path, out: Path, checkpoint, source: dict, device) -> Path:
    """A LoRA run on a 4-bit base, or on a pretrained base: merge the adapter into the base shard by shard
    (`dgft.merge`), keep the base's dtype (bf16 for a released checkpoint: loading the whole model in fp32 to merge it
    would take twice its size in host memory, 104 GB for DiffusionGemma-26B-A4B, and export it at twice the size),
    and ship the unmerged adapter beside it (`adapter/`), since servers without LoRA support need the merged weights
    and others prefer the adapter. A 4-bit run's adapter goes, by default (`merge_into=dequantized`), into the
    weights the run trained on: each 4-bit weight quantized as training quantized it and dequantized
    (`dgft.quant.as_trained`), every other weight in bf16, buffers as they are (`_trained_weights`);
    `merge_into=base` merges it into the unquantized base instead, another model.

    Checks, where the base fits in host memory (`max_check_gb`): merged logits vs the adapter on the same base
    weights (the merge itself; must be within atol), and vs the model the run trained (recorded, not gated: with a
    4-bit base, GAP_CAUSES, and with `merge_into=base` the quantization too).
    """
    from transformers import DiffusionGemmaForBlockDiffusion

    from dgft.merge import MergeError, merge_streaming
    from dgft.model import load_adapter, local_checkpoint
    from dgft.runs import load_model
    from dgft.stream import StreamLoadError

    if checkpoint is not None and keeps_average(rcfg):
        raise RunError(f"checkpoint={cfg.checkpoint}: this run keeps a moving average of its weights "
                       f"(trainer.ema_decay), and the streaming merge would merge {checkpoint}'s adapter file, the "
                       "weights as they trained, not the average the run evaluates; export the run's final adapter "
                       "(no checkpoint=)")
    base_dir = run_dir / "base" if rcfg.model.name == "tiny" else local_checkpoint(rcfg.model.path)
    adapter = checkpoint or run_dir / "adapter"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    four_bit = rcfg.model.get("quantize", "none") == "nf4"
    weights_of = None  # four_bit and merge_into=dequantized: the 4-bit weights, dequantized, in place of the base's
    try:
        try:
            if four_bit and cfg.merge_into == "dequantized":
                weights_of = _trained_weights(base_dir, rcfg.model.get("quant_group_size", 32), device)
            summary = merge_streaming(base_dir, adapter, tmp, weights_of=weights_of)
        except (StreamLoadError, MergeError) as err:
            raise ExportError(f"merging {adapter} into the base {base_dir} failed: {err}; nothing was "
                              "exported") from err
        shutil.copytree(adapter, tmp / "adapter", ignore=shutil.ignore_patterns(ckpt.TRAINER_STATE, ckpt.EXTRA,
                                                                                 ckpt.MANIFEST))
        _copy_tokenizer(run_dir / "tokenizer", tmp)
        _tokenizer_loads(tmp, run_dir / "tokenizer")
        (tmp / SAMPLER_FILE).write_text(json.dumps(sampler_settings(rcfg), indent=1))
        checks = {"merged_max_abs_diff": None, "quantization_gap_max_abs_diff": None}
        if summary["bytes"] <= cfg.max_check_gb * 1e9:
            merged = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tmp), dtype=torch.float32,
                                                                     use_safetensors=True).eval()
            prompt, mask, canvas = check_batch(merged.config)
            got = check_logits(merged, prompt, mask, canvas)
            merged = None
            plain = DiffusionGemmaForBlockDiffusion.from_pretrained(str(base_dir), dtype=torch.float32,
                                                                    use_safetensors=True)
            if weights_of is not None:  # the same base weights as the merge's (buffers stay as they are)
                with torch.no_grad():
                    for name, param in plain.named_parameters():
                        trained = weights_of(name, param.data)
                        if trained is not None:
                            param.copy_(trained.float())
            plain = load_adapter(plain, adapter)
            reference = check_logits(plain, prompt, mask, canvas)
            stored = _stored_dtype(tmp)
            if stored != torch.float32:  # the merged weights are rounded to the base's dtype: compare with the
                # adapter merged in fp32 and rounded alike, and record what the rounding alone moves
                checks["rounding_max_abs_diff"] = _max_diff(reference, got)
                plain = merge_adapter(plain)
                with torch.no_grad():
                    for param in plain.parameters():
                        param.copy_(param.to(stored).float())
                reference = check_logits(plain, prompt, mask, canvas)
            checks["merged_max_abs_diff"] = _max_diff(reference, got)
            plain = None
            _require(checks["merged_max_abs_diff"], cfg.atol, "merged model vs adapter on the " + (
                "4-bit base's weights, dequantized" if weights_of is not None else "unquantized base"))
            trained = load_model(run_dir, rcfg, checkpoint=checkpoint, device=device)
            checks["quantization_gap_max_abs_diff"] = _max_diff(
                check_logits(trained, prompt.to(device), mask.to(device), canvas.to(device)).cpu(), got)
        record = {"run": str(run_dir.resolve()), "source": source, "finetune": "lora",
                  "quantize": rcfg.model.get("quantize", "none"),
                  **({"merge_into": cfg.merge_into} if "merge_into" in source else {}), "merge": summary,
                  "checkpoint": str(checkpoint) if checkpoint else None, "step": _step(run_dir, checkpoint),
                  **checks, "atol": cfg.atol, "checked": checks["merged_max_abs_diff"] is not None,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        ckpt.readable_as_umask_allows(tmp)  # the merged shards
        (tmp / CARD_FILE).write_text(model_card(run_dir, rcfg, checkpoint, record["step"], _streamed_note(rcfg, checks,
                                                                                                        cfg)))
        record["outputs"] = output_hashes(tmp)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1))
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if checks["merged_max_abs_diff"] is None:
        print(f"exported {run_dir} -> {out} ({summary['merged_tensors']} tensors merged; the base is over "
              f"max_check_gb={cfg.max_check_gb}, so logits were not compared here)")
    else:
        rounding = checks.get("rounding_max_abs_diff")
        if rounding is None:
            print(f"exported {run_dir} -> {out} (max |logit diff| merged vs adapter "
                  f"{checks['merged_max_abs_diff']:.2e}, atol {cfg.atol})")
        else:  # the merged weights are stored in the base's dtype: the gate is the merge, the rounding is recorded
            print(f"exported {run_dir} -> {out} (max |logit diff| merged vs peft's merge rounded to the base's dtype "
                  f"alike {checks['merged_max_abs_diff']:.2e}, atol {cfg.atol}; the rounding itself moves the "
                  f"logits {rounding:.2e} from the adapter's, recorded, not checked)")
        if weights_of is not None:
            print(f"the adapter is merged into the 4-bit weights the run trained on, dequantized: the export's logits "
                  f"differ from the trained model's by up to {checks['quantization_gap_max_abs_diff']:.2e} on the "
                  f"check batch ({GAP_CAUSES}); `dgft eval {out} data=FILE` measures the export itself")
        elif four_bit:
            print(f"note: the run trained and was evaluated on the 4-bit base; merge_into=base merges its adapter into "
                  f"the unquantized base, whose logits differ from the trained model's by up to "
                  f"{checks['quantization_gap_max_abs_diff']:.2e} on the check batch, so the run's evaluations do "
                  "not carry over to the export")
        else:
            gap = checks["quantization_gap_max_abs_diff"]
            print(f"max |logit diff| vs the run's model {gap:.2e}" + (
                f", over atol {cfg.atol} (the run's base in model.dtype={rcfg.model.dtype}, the export's weights as "
                f"stored): the run's evaluations do not carry over; `dgft eval {out} data=FILE` measures the export"
                if gap > cfg.atol else ""))
    return out


def _trained_weights(base_dir: Path, group_size: int, device):
    """`merge_streaming`'s `weights_of` for a 4-bit run: each checkpoint tensor as training held it (as
    `dgft.stream.Loader` places it): a 4-bit weight quantized on `device` and dequantized (`dgft.quant.as_trained`),
    a buffer as it is (None), every other floating tensor in bf16. Errors name the base, or the shard and tensor."""
    from transformers import DiffusionGemmaConfig

    from dgft.merge import MergeError
    from dgft.quant import as_trained, make_slots
    from dgft.stream import StreamLoadError, buffer_names, config_errors, shard_files, skeleton

    shard_files(base_dir)  # an empty or missing base: named as the merge names it
    if not (base_dir / "config.json").is_file():  # transformers would give a default config instead
        raise StreamLoadError(f"{base_dir}: no config.json")
    try:
        config = DiffusionGemmaConfig.from_pretrained(str(base_dir))
    except config_errors() as err:
        raise StreamLoadError(f"{base_dir}: no readable DiffusionGemma config.json ({err})") from err
    core = skeleton(config)  # on the meta device: no memory
    buffers = buffer_names(core)
    slots = make_slots(core, "meta", group_size=group_size)  # the 4-bit modules `as_trained` quantizes as

    def weights_of(name, tensor):
        try:
            trained = as_trained(slots, name, tensor, device=device)
        except (ValueError, IndexError, TypeError, RuntimeError) as err:
            raise MergeError(f"{name} has shape {tuple(tensor.shape)}, which the 4-bit base does not hold "
                             f"({err})") from None
        if trained is not None or name in buffers or not tensor.is_floating_point():
            return trained
        return tensor.to(torch.bfloat16)

    return weights_of


def _streamed_note(rcfg, checks: dict, cfg) -> str:
    """The model card's sentence on whether the run's figures carry over to a shard-by-shard export."""
    if rcfg.model.get("quantize") == "nf4" and cfg.merge_into == "base":
        return ("The run trained and was evaluated on the 4-bit base; this export is the unquantized base with the "
                "adapter merged (merge_into=base), a different model (export.json records the gap), so these figures "
                "do not carry over.")
    if rcfg.model.get("quantize") == "nf4":
        gap = checks.get("quantization_gap_max_abs_diff")
        compared = (f"its logits differ from the trained model's by up to {gap:.1e} on the check batch (export.json; "
                    f"{GAP_CAUSES})") if gap is not None else (
            f"its logits were not compared with the trained model's (the base is over max_check_gb={cfg.max_check_gb})")
        return ("The run trained and was evaluated on the 4-bit base; this export is the adapter merged into those "
                f"4-bit weights, dequantized, in bf16: the trained model's weights summed into one set; {compared}. "
                "These figures are the trained model's, with its adapter apart; `dgft eval THIS_DIR data=FILE` "
                "measures this export itself.")
    if checks["merged_max_abs_diff"] is None:
        return (f"The base is over max_check_gb={cfg.max_check_gb}, so the export's logits were not compared with the "
                "run's: these figures are the run's model's, not checked against this export.")
    rounding = checks.get("rounding_max_abs_diff")
    if rounding is not None:
        return (f"The merged weights are stored in the base's dtype, which moves the logits by up to {rounding:.1e} "
                "on the check batch (export.json): these figures are the unrounded model's.")
    gap = checks.get("quantization_gap_max_abs_diff")
    if gap is not None and gap > cfg.atol:  # the run's base in another dtype than the export's weights (model.dtype)
        return (f"The run's model gives logits up to {gap:.1e} from this export's on the check batch (export.json; "
                f"over atol {cfg.atol}: its base as training loaded it, model.dtype={rcfg.model.dtype}, the export's "
                "weights as stored): these figures are the run's model's; `dgft eval THIS_DIR data=FILE` measures "
                "this export itself.")
    return _figures_hold(max(checks["merged_max_abs_diff"], gap or 0.0), cfg.atol)


def _figures_hold(diff: float, atol: float) -> str:
    """The model card's sentence for an export checked against the run's model within `atol`."""
    return (f"The export gives the run's logits to within {diff:.1e} on the check batch (atol {atol}; export.json), "
            "so these figures hold for it (up to float rounding: where two choices are that close, a sampled answer "
            "can differ; `dgft eval THIS_DIR data=FILE` measures the export itself).")


# --- merge and check ------------------------------------------------------------------------------
def merge_adapter(peft_model):
    """Fold a shared-adapter LoRA model (`dgft.model.attach_lora`) into its base; the plain model back."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    core = peft_model.merge_and_unload()
    retie_encoder(core)
    left = [name for name, m in core.named_modules() if isinstance(m, BaseTunerLayer)]
    if left:
        raise ExportError(f"LoRA wrappers left after the merge: {', '.join(left[:5])}")
    return core


def check_adapter_loaded(model, adapter_dir: Path) -> None:
    """Every tensor of the adapter file must be in the model: a dropped tensor would pass the logit checks."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(model)
    wrong = [k for k, v in saved.items() if k not in loaded or not torch.equal(loaded[k].detach().cpu().to(v.dtype), v)]
    if wrong:
        raise ExportError(f"{adapter_dir}: {len(wrong)} of {len(saved)} adapter tensors did not load into the model "
                          f"(first: {wrong[0]}); was it saved by another version of dgft.model.attach_lora?")


def check_batch(config, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed random prompt (B, P), its mask (B, P) and a canvas (B, L) from a seeded generator.

    Multimodal placeholder ids (image, begin/end of image) are replaced: the encoder would look for pixels.
    """
    gen = torch.Generator().manual_seed(CHECK_SEED)
    text = config.get_text_config()
    length = getattr(config, "canvas_length", None) or 16
    prompt = torch.randint(0, text.vocab_size, (CHECK_BATCH, CHECK_PROMPT), generator=gen)
    canvas = torch.randint(0, text.vocab_size, (CHECK_BATCH, length), generator=gen)
    media = [getattr(config, k, None) for k in ("image_token_id", "boi_token_id", "eoi_token_id", "video_token_id",
                                                "audio_token_id")]
    media = torch.tensor([i for i in media if i is not None], dtype=torch.long)
    fill = text.bos_token_id if text.bos_token_id is not None else 0
    prompt[torch.isin(prompt, media)] = fill
    canvas[torch.isin(canvas, media)] = fill
    return prompt.to(device), torch.ones_like(prompt).to(device), canvas.to(device)


@torch.no_grad()
def check_logits(model, prompt, mask, canvas) -> torch.Tensor:
    """Decoder logits (2, B, L, V): a plain pass, then one self-conditioned on it (covers that block too)."""
    model.eval()
    cache = encode(model, prompt, mask)
    first = denoise(model, cache, canvas, mask)
    sc_mask = torch.ones(canvas.shape[0], dtype=torch.bool, device=canvas.device)
    second = denoise(model, cache, canvas, mask, sc_logits=first, sc_mask=sc_mask)
    return torch.stack([first.float(), second.float()])


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _require(diff: float, atol: float, what: str) -> None:
    if not diff <= atol:  # also catches NaN
        raise ExportError(f"{what}: max |logit difference| {diff:.3e} exceeds atol={atol:g}; nothing was exported")


# --- files ----------------------------------------------------------------------------------------
def source_hashes(run_dir: Path, rcfg, checkpoint: Path | None) -> dict[str, str]:
    """sha256 of every file the export is made from (weights, their configs, tokenizer, config.yaml).

    A pretrained base is named by its path, not hashed (tens of GB); a tiny LoRA base (RUN/base) is hashed. A
    checkpoint of a run that averages its weights is exported as the average in its trainer state: hashed too.
    """
    lora = rcfg.model.finetune == "lora"
    weights = checkpoint or run_dir / ("adapter" if lora else "model")
    marker = weights / ("adapter_config.json" if lora else "config.json")
    if not marker.exists():
        raise RunError(no_weights(run_dir, weights, lora, checkpoint=checkpoint is not None))
    files = [run_dir / "config.yaml", *_weight_files(weights)]
    if lora and rcfg.model.name == "tiny":
        if not (run_dir / "base" / "config.json").exists():
            raise RunError(f"{run_dir / 'base'}: no base weights (config.json) for this LoRA run")
        files += _weight_files(run_dir / "base")
    if checkpoint is not None and keeps_average(rcfg):
        files.append(checkpoint / ckpt.TRAINER_STATE)
    tokenizer = run_dir / "tokenizer"
    if not tokenizer.is_dir():
        raise RunError(f"{tokenizer}: no tokenizer saved in this run")
    require_tokenizer_files(tokenizer)
    files += sorted(p for p in tokenizer.iterdir() if p.is_file())
    out = {os.path.relpath(p, run_dir): ckpt.sha256(p) for p in files}
    if lora and rcfg.model.name != "tiny":
        out["base"] = str(rcfg.model.path)
    return out


def _weight_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" or p.name.endswith("config.json"))
    if not any(p.suffix == ".safetensors" for p in files):
        raise RunError(f"{path}: no .safetensors weights")
    return files


def sampler_settings(rcfg) -> dict:
    """What sampling the exported model needs beyond its weights and tokenizer: the run's sampler, its noise, and
    its task (how prompts and canvases are laid out: token kind, sizes, canvas length, prompt format)."""
    task = OmegaConf.to_container(rcfg.task, resolve=True)
    task.pop("cache_dir", None)  # where this machine cached the generated data
    return {"sampler": OmegaConf.to_container(rcfg.sampler, resolve=True),
            "noise": {"kind": rcfg.noise.kind, "support": rcfg.noise.support,
                      "known_in_prompt": bool(rcfg.noise.get("known_in_prompt", False))},
            "task": task}


def is_export(path: str | Path) -> bool:
    """Whether `path` is an export (it holds SAMPLER_FILE), not a run directory."""
    return (Path(path) / SAMPLER_FILE).is_file()


def read_settings(path: str | Path):
    """-> (the config `dgft eval` and `dgft.solve` sample with, whether `path` is an export): an export's
    SAMPLER_FILE or a run's config.yaml; a RunError naming the folder when it is neither."""
    path = Path(path)
    if is_export(path):
        return read_export(path), True
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: a file, not a run directory or an export (dgft eval RUN [data={path}]?)")
    if not path.exists():
        raise RunError(f"{path}: no such directory" + (" (an export: `dgft export RUN` makes it again)"
                                                       if path.name.startswith("export") else ""))
    if path.is_dir() and not (path / "config.yaml").exists():
        raise RunError(f"{path}: neither a run directory (no config.yaml) nor an export (no {SAMPLER_FILE})")
    return load_config(path), False


def read_export(path: str | Path):
    """An export's sampling settings (SAMPLER_FILE: its run's sampler, noise and task), as a config with the keys a
    run's config.yaml gives `dgft eval` and `dgft.solve`; a RunError naming the file when they are not there."""
    file = Path(path) / SAMPLER_FILE
    try:
        settings = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{file}: not readable as JSON ({err})") from err
    missing = [k for k in ("sampler", "noise", "task") if not isinstance(settings, dict)
               or not isinstance(settings.get(k), dict)]
    missing += [f"{k}.{f}" for k, f in (("noise", "kind"), ("noise", "support"), ("task", "name"))
                if k not in missing and f not in settings[k]]
    if missing:
        raise RunError(f"{file}: no {', '.join(missing)} key; is it written by `dgft export`?")
    _type_sections(settings, file)
    if settings["task"].get("tokenizer") is not None:  # the run's tokenizer path, as it was: the export has its own
        settings["task"]["tokenizer"] = str(Path(path))
    return OmegaConf.create(settings)


def _type_sections(settings: dict, file: Path) -> None:
    """The task and sampler sections of an export's settings typed with their schemas, in place: a key this version
    does not know or a value of the wrong type is a RunError naming the key; a key left out (a hand edit, an export
    from before the setting) takes its default, and the keys so filled are printed."""
    from omegaconf.errors import OmegaConfBaseException

    from dgft.config import TASK_SCHEMAS, SamplerConfig, merge_problem

    name = settings["task"]["name"]
    schema = TASK_SCHEMAS.get(name) if isinstance(name, str) else None
    if schema is None:
        raise RunError(f"{file}: task.name={name!r}: expected one of {', '.join(TASK_SCHEMAS)}")
    filled = []
    for section, cls in (("task", schema), ("sampler", SamplerConfig)):
        typed = OmegaConf.structured(cls)
        filled += [f"{section}.{k}={OmegaConf.select(typed, k)}" for k in typed
                   if k not in settings[section] and k != "cache_dir"]
        try:
            settings[section] = OmegaConf.to_container(OmegaConf.merge(typed, settings[section]))
        except (OmegaConfBaseException, ValueError) as err:
            raise RunError(f"{file}: {section}.{merge_problem(err)} (written by another version of dgft, or "
                           "edited?)") from err
    settings["task"].pop("cache_dir", None)  # as sampler_settings writes it: where the training machine cached data
    if filled:
        print(f"{file}: no {', '.join(f.split('=')[0] for f in filled)}; using the defaults: {', '.join(filled)}",
              file=sys.stderr)


def load_export(path: str | Path, device="cpu"):
    """An export's model (`from_pretrained`, one-expert models given dgft's plain experts path), in eval mode on
    `device`; a RunError naming the directory when its weights are not there or cannot be read."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from dgft.model import one_expert_path
    from dgft.runs import unreadable

    path = Path(path)
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise RunError(f"{path}: an export without its weights (config.json and *.safetensors); run `dgft export` "
                       "again")
    with unreadable(path):
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(path), use_safetensors=True)
    return one_expert_path(model).to(device).eval()


def check_export(path: str | Path) -> dict:
    """An export about to be evaluated, checked: its tokenizer files are there, and every file export.json records
    is there unchanged (size, sha256), else a RunError naming the file. -> what the evaluation records about the
    weights: the run step they are from and the sha256 of each weight file `from_pretrained` reads (computed here
    for an export without a readable export.json, which is said)."""
    path = Path(path)
    require_tokenizer_files(path)
    try:
        record = json.loads((path / RECORD_FILE).read_text())
        outputs = {str(k): {"bytes": int(v["bytes"]), "sha256": str(v["sha256"])} for k, v in record["outputs"].items()}
        step = record.get("step")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        print(f"{path}: no readable {RECORD_FILE} to check the files against; hashing the weights here")
        return {"step": None, "weights_sha256": ckpt.weight_hashes(path)}
    changed = ckpt.mismatch(path, _but_card(outputs))  # `dgft export` may refresh the card meanwhile
    if changed and changed.startswith(SAMPLER_FILE + " "):
        raise RunError(f"{path}: {changed} ({RECORD_FILE} lists what the export wrote). The sampler settings an "
                       f"export was made with stay as made: pass other ones as overrides (`dgft eval EXPORT "
                       f"sampler.views=1`, `solver(puzzles, views=1)`), and run `dgft export` again to restore the file")
    if changed:
        raise RunError(f"{path}: {changed} ({RECORD_FILE} lists what the export wrote); run `dgft export` again")
    return {"step": step, "weights_sha256": weight_hashes(outputs)}


def weight_hashes(outputs: dict) -> dict:
    """The sha256 of each weight file `from_pretrained` reads, from export.json's `outputs` (name -> bytes, sha256):
    what an evaluation of the export records, and what the card matches its evaluations against."""
    return {name: v["sha256"] for name, v in outputs.items() if name.endswith(".safetensors") and "/" not in name}


def require_tokenizer_files(path: Path) -> None:
    """A tokenizer directory AutoTokenizer loads as it was saved (its config and one vocabulary file), else a RunError;
    without them AutoTokenizer may fall back to another tokenizer without a word."""
    if not (path / TOKENIZER_CONFIG).is_file() or not any((path / f).is_file() for f in TOKENIZER_VOCAB):
        raise RunError(f"{path}: incomplete tokenizer (needs {TOKENIZER_CONFIG} and one of "
                       f"{', '.join(TOKENIZER_VOCAB)}); the export would not load with AutoTokenizer. Restore it, "
                       f"e.g. from the base model's tokenizer files")


def _stored_dtype(path: Path) -> torch.dtype:
    """The dtype of the floating-point weights a safetensors export holds (its first such tensor's)."""
    from safetensors import safe_open

    names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                kind = f.get_slice(key).get_dtype()
                if kind in names:
                    return names[kind]
    return torch.float32


def output_hashes(out: Path) -> dict[str, dict]:
    """Size and sha256 of every file of the export (but RECORD_FILE), by path relative to `out`."""
    return ckpt.file_records(out, sorted(p for p in out.rglob("*")
                                         if p.is_file() and p.relative_to(out) != Path(RECORD_FILE)))


def _but_card(recorded: dict) -> dict:
    """An export's file records without its model card's: the card is not the model, and `dgft export` rewrites its
    list of evaluations in an export that is otherwise up to date."""
    return {name: v for name, v in recorded.items() if name != CARD_FILE}


def _check_outputs(out: Path, card: bool = True) -> str | None:
    """None if every file export.json records (the card too, unless `card` is false) is there with its size and
    sha256; else why not, in a few words."""
    try:
        recorded = {str(name): {"bytes": int(v["bytes"]), "sha256": str(v["sha256"])}
                    for name, v in json.loads((out / RECORD_FILE).read_text())["outputs"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{RECORD_FILE} records no output files (an older or edited export)"
    if recorded and CARD_FILE not in recorded:
        return f"no model card ({CARD_FILE}): an export from before dgft wrote one"
    if not recorded:
        return f"{RECORD_FILE} records no output files"
    return ckpt.mismatch(out, recorded if card else _but_card(recorded))


def _remove_stale(out: Path) -> None:
    """Remove `.{out.name}.tmp-PID` / `.old-PID` dirs left by an export that was killed (PID no longer running).

    A dir of a running process (another export, or this one) is left alone. An `.old-` dir of a dead export
    while `out` is missing is the previous export (killed between its two renames): it is put back as `out`."""
    if not out.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)")
    for path in sorted(out.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match or not path.is_dir() or path.is_symlink() or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not out.exists() and (path / RECORD_FILE).is_file():
            os.replace(path, out)
            print(f"{out}: restored the previous export from {path.name} (left by a killed export)")
        else:
            evaluations = path / EVAL_DIR  # killed between the swap and the move of its evaluations: moved over
            if match.group(1) == "old" and evaluations.is_dir() and out.is_dir() and not (out / EVAL_DIR).exists():
                os.replace(evaluations, out / EVAL_DIR)
                print(f"{out / EVAL_DIR}: moved over from {path.name} (left by a killed export)")
            shutil.rmtree(path, ignore_errors=True)
            print(f"removed {path} (left by a killed export, pid {match.group(2)})")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we wrote: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # exists (another user's), or unknown: keep
    return True


def _refresh_card(out: Path, run_dir: Path, checkpoint: Path | None) -> bool | None:
    """An up-to-date export's model card, with the run's evaluations as they are now (they may have been made after
    the export) and the export's own made with its weights, and export.json's record of it: whether either was
    rewritten (the weights never are). The card is written first, so an export killed between the two writes is
    mended by the next run of this. None when the card is missing or its evaluations section is not where dgft
    puts it (edited by hand): export it again."""
    card = out / CARD_FILE
    try:
        old = card.read_text()
    except (OSError, ValueError):
        return None
    record = json.loads((out / RECORD_FILE).read_text())
    new = with_evaluations(old, run_dir, checkpoint, out, weight_hashes(record["outputs"]))
    if new is None:
        return None
    if new != old:
        replace_file(card, new)
    now = ckpt.file_records(out, [card])
    if record["outputs"].get(CARD_FILE) == now[CARD_FILE]:
        return new != old
    record["outputs"].update(now)
    replace_file(out / RECORD_FILE, json.dumps(record, indent=1))
    return True


def _recorded(out: Path, key: str):
    """An earlier export's export.json entry `key` (`source`: the run files it was made from; `run`: that run's
    path, which exports before session 32 lack); None when there is no such record."""
    try:
        return json.loads((out / RECORD_FILE).read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _step(run_dir: Path, checkpoint: Path | None) -> int | None:
    try:
        if checkpoint:
            return int(json.loads((checkpoint / ckpt.MANIFEST).read_text())["step"])
        return int(json.loads((run_dir / "train_summary.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tokenizer_loads(out: Path, src: Path) -> None:
    """The export's tokenizer loads with AutoTokenizer, as its users will load it; else a RunError naming the run's
    tokenizer, which it was copied from (its files can be there and still not load: an emptied tokenizer.json)."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(out))
    except Exception as err:  # noqa: BLE001 - tokenizers raise many types for a broken file
        raise RunError(f"{src}: the run's tokenizer does not load ({type(err).__name__}: {str(err)[:200]}); the export "
                       "would not either. Restore it (dgft train saved it with the run)") from err


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for path in sorted(src.iterdir()):
        if path.is_file():
            if (dst / path.name).exists():
                raise RunError(f"{path}: would overwrite the model's {path.name} in the export")
            shutil.copy2(path, dst / path.name)


RUN_OWN = (*(name for name, kind in RUN_KINDS.items() if kind == "folder"), "eval")  # folders a run writes


def _check_out(out: Path, run_dir: Path) -> None:
    """`out` is replaced as a whole, so it must be new, empty or an earlier export (it holds RECORD_FILE), and
    must not hold the run: anything else there would be deleted."""
    if out.exists() and not out.is_dir():
        raise RunError(f"out={out}: is a file; give a directory for the export")
    if out.resolve() in (run_dir.resolve(), *run_dir.resolve().parents):
        raise RunError(f"out={out}: holds the run {run_dir}, which the export would replace; give another directory")
    inside = next((d for d in RUN_OWN if (run_dir / d).resolve() in (out.resolve(), *out.resolve().parents)), None)
    if inside is not None:  # training prunes checkpoints/, a resume rewrites model/ (the run's export/ goes beside)
        raise RunError(f"out={out}: inside the run's {inside}/, which dgft writes and replaces (training, resuming, "
                       f"pruning, evaluating); give a directory of its own (the default is {run_dir / 'export'})")
    if out.is_dir() and any(out.iterdir()) and not (out / RECORD_FILE).is_file():
        raise RunError(f"out={out}: exists and is not an earlier dgft export (no {RECORD_FILE}); the export replaces "
                       "the directory as a whole, so give a new or empty one")
    foreign = _not_exported(out)
    if foreign:
        raise RunError(f"out={out}: holds files an export did not write ({', '.join(foreign[:5])}"
                       f"{' ...' * (len(foreign) > 5)}), which replacing the export would delete; move them out")
    other = _recorded(out, "run")  # outside the run: another run's export must not be replaced (the run moved: said so)
    if isinstance(other, str) and Path(other) != run_dir.resolve() and run_dir.resolve() not in out.resolve().parents:
        raise RunError(f"out={out}: holds the export of another run ({other}; or of this one, moved since), which "
                       "this one would replace, its evaluations too; give another directory, or remove that export")
    why = cannot_make(out.absolute().parent)  # the export is written beside `out`: tried now, before minutes of loading
    if why:
        raise RunError(f"out={out}: cannot be created: {why}")


_EXPORT_NAMES = re.compile(r"config\.json|generation_config\.json|.*\.safetensors(\.index\.json)?|"
                           r"special_tokens_map\.json|merges\.txt|chat_template\..*")  # beside the named files


def _not_exported(out: Path) -> list[str]:
    """The names in an earlier export `out` that no export wrote: not in its record's outputs (the folders they
    are in), nor its record, card, sampler settings, tokenizer or evaluations; an older record without outputs:
    not a name an export writes."""
    if not (out / RECORD_FILE).is_file():
        return []
    recorded = _recorded(out, "outputs")
    kept = {RECORD_FILE, EVAL_DIR, CARD_FILE, SAMPLER_FILE, TOKENIZER_CONFIG, *TOKENIZER_VOCAB}
    if isinstance(recorded, dict):
        kept |= {Path(name).parts[0] for name in recorded}
    return sorted(p.name for p in out.iterdir()
                  if p.name not in kept and not (recorded is None and _EXPORT_NAMES.fullmatch(p.name)))


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an old `out` is moved aside first and removed only after the swap, but for its
    evaluations (EVAL_DIR), which move into the new export."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old.exists():
            os.replace(old, out)
        raise
    if (old / EVAL_DIR).is_dir():  # `dgft eval EXPORT` results: each names the weights it measured (sha256)
        os.replace(old / EVAL_DIR, out / EVAL_DIR)
    shutil.rmtree(old, ignore_errors=True)
