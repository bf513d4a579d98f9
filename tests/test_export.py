"""Export round trips on tiny real DiffusionGemma models (CPU, seconds): merged logits == adapter logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dgft.config import ExportRecipe, ModelConfig, TrainRecipe
from dgft.export import ExportError, check_batch, check_logits, export, merge_adapter
from dgft.model import attach_lora, build_tiny, unwrap
from dgft.runs import RunError, load_model

SIZES = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
             moe_intermediate_size=32, canvas_length=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one thread is fastest, and far faster than threads competing with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model_cfg(**kw):
    return OmegaConf.structured(ModelConfig(**{**SIZES, **kw}))


def randomize_lora(model, seed: int = 1) -> None:
    """peft starts B at 0 (adapter == base); random B makes a wrong merge visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def logits_of(model):
    return check_logits(model, *check_batch(unwrap(model).config))


def make_run(tmp_path, finetune: str, target_experts: bool = False):
    """A run dir as `dgft train` leaves it; returns (run dir, the trained model's logits on the check batch)."""
    from dgft.tasks.sudoku.task import SudokuTask

    cfg = OmegaConf.structured(TrainRecipe())
    cfg.model = tiny_model_cfg(finetune=finetune)
    cfg.model.lora.target_experts = target_experts
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    task = SudokuTask(cfg.task)
    task.build_tokenizer().save_pretrained(str(run / "tokenizer"))
    model = build_tiny(cfg.model, task.vocab_size)
    if finetune == "lora":
        model.save_pretrained(str(run / "base"))
        model = attach_lora(model, cfg.model.lora)
        randomize_lora(model)
        model.save_pretrained(str(run / "adapter"))
    else:
        with torch.no_grad():  # "trained": not the seed-0 init that build_tiny would give again
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.save_pretrained(str(run / "model"))
        model.generation_config.save_pretrained(str(run / "model"))
    record_weights(run)
    return run, logits_of(model)


def record_weights(run: Path) -> None:
    """train_summary.json as training writes it last, recording the final weights' files (as a resume does again)."""
    from dgft.checkpoint import file_records, model_files
    from dgft.runs import trained_settings_digest

    weights = run / ("adapter" if (run / "adapter").is_dir() else "model")
    (run / "train_summary.json").write_text(json.dumps({
        "steps": OmegaConf.load(run / "config.yaml").trainer.max_steps, "stopped_by": None,
        "weights": file_records(weights, model_files(weights)), "settings_sha256": trained_settings_digest(run)}))


def export_cfg(run, **kw):
    return OmegaConf.structured(ExportRecipe(run=str(run), **kw))


def mtimes(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*")}


# --- LoRA merge -----------------------------------------------------------------------------------
@pytest.mark.parametrize("target_experts", [False, True])
def test_merged_logits_equal_adapter_logits(target_experts):
    mcfg = tiny_model_cfg(finetune="lora")
    mcfg.lora.target_experts = target_experts
    base = build_tiny(mcfg, vocab_size=120)
    base_logits = logits_of(base)
    model = attach_lora(base, mcfg.lora)
    randomize_lora(model)
    adapter = logits_of(model)
    assert (adapter - base_logits).abs().max() > 1e-2  # the adapter does something

    merged = merge_adapter(model)
    assert (logits_of(merged) - adapter).abs().max() <= 1e-4
    assert not [k for k in merged.state_dict() if "lora_" in k or "base_layer" in k]
    enc, dec = merged.model.encoder.language_model.layers[0], merged.model.decoder.layers[0]
    assert enc.self_attn.q_proj.weight is dec.self_attn.q_proj.weight
    assert enc.experts.gate_up_proj is dec.experts.gate_up_proj


def test_separate_encoder_and_decoder_adapters_merge_wrongly():
    """What attach_lora avoids: peft's "all-linear" adapts both tied copies, and the merge adds both deltas."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny(tiny_model_cfg(), vocab_size=120), LoraConfig(r=4, target_modules="all-linear"))
    randomize_lora(model)
    adapter = logits_of(model)
    merged = model.merge_and_unload()
    assert (logits_of(merged) - adapter).abs().max() > 1e-2


# --- run dirs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("target_experts", [False, True])
def test_lora_run_export_round_trip(tmp_path, capsys, target_experts):
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    run, adapter = make_run(tmp_path, "lora", target_experts)
    assert (logits_of(load_model(run)) - adapter).abs().max() <= 1e-5

    out = export(export_cfg(run))
    assert out == run / "export"
    reloaded = DiffusionGemmaForBlockDiffusion.from_pretrained(str(out))
    assert (logits_of(reloaded) - adapter).abs().max() <= 1e-4
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.convert_tokens_to_ids("[MASK]") == 6
    assert (out / "generation_config.json").exists()
    sampler = json.loads((out / "dgft_sampler.json").read_text())
    assert sampler["noise"] == {"kind": "uniform", "support": "answer", "known_in_prompt": False}
    assert "steps" in sampler["sampler"] and sampler["task"]["tokens"] == "cell" and sampler["task"]["sizes"] == [9, 4]
    assert "cache_dir" not in sampler["task"]
    record = json.loads((out / "export.json").read_text())
    assert record["merged_max_abs_diff"] <= record["atol"] == 1e-4
    assert record["reload_max_abs_diff"] <= 1e-4
    assert "adapter/adapter_model.safetensors" in record["source"]
    assert not list(run.glob(".export.[to]*-*"))  # no temporary dirs left

    before = mtimes(out)
    capsys.readouterr()
    export(export_cfg(run))
    assert "up to date" in capsys.readouterr().out
    assert mtimes(out) == before

    # a changed adapter is a new source: exported again
    model = load_model(run)
    randomize_lora(model, seed=2)
    model.save_pretrained(str(run / "adapter"))
    record_weights(run)  # as the resumed training that changed it would
    export(export_cfg(run))
    assert json.loads((out / "export.json").read_text())["source"] != record["source"]
    reloaded = DiffusionGemmaForBlockDiffusion.from_pretrained(str(out))
    assert (logits_of(reloaded) - logits_of(model)).abs().max() <= 1e-4


def test_logit_mismatch_raises_and_writes_nothing(tmp_path):
    run, _ = make_run(tmp_path, "lora")
    with pytest.raises(ExportError, match="merged model vs adapter: max"):
        export(export_cfg(run, atol=0.0, out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.[to]*-*"))


def test_adapter_that_does_not_load_is_refused(tmp_path):
    """An adapter whose targets miss its saved tensors (here: the decoder's copies, as an older attach_lora
    named them) loads with B=0; merged == adapter would still hold, so export checks the load itself."""
    run, _ = make_run(tmp_path, "lora")
    path = run / "adapter" / "adapter_config.json"
    config = json.loads(path.read_text())
    config["target_modules"] = config["target_modules"].replace(r"encoder\.language_model", "decoder")
    path.write_text(json.dumps(config))
    with pytest.raises(RunError, match="adapter_config.json .* not the weights the run trained"):
        export(export_cfg(run))  # not the adapter training saved (train_summary.json); as if it were:
    summary = json.loads((run / "train_summary.json").read_text())
    (run / "train_summary.json").write_text(json.dumps({**summary, "weights": None}))
    with pytest.warns(UserWarning, match="missing adapter keys"), pytest.raises(ExportError, match="did not load"):
        export(export_cfg(run))
    assert not (run / "export").exists()


def test_full_run_export_through_cli(tmp_path):
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    from dgft.cli import main

    run, trained = make_run(tmp_path, "full")
    main(["export", str(run), f"out={tmp_path / 'standalone'}"])
    out = tmp_path / "standalone"
    reloaded = DiffusionGemmaForBlockDiffusion.from_pretrained(str(out))
    assert (logits_of(reloaded) - trained).abs().max() <= 1e-4
    assert AutoTokenizer.from_pretrained(str(out)).convert_tokens_to_ids("[PAD]") == 0
    record = json.loads((out / "export.json").read_text())
    assert record["finetune"] == "full" and record["merged_max_abs_diff"] is None
    assert "model/model.safetensors" in record["source"]


# --- errors ---------------------------------------------------------------------------------------
def test_missing_run_dir(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(RunError, match="no-such-run"):
        export(export_cfg(missing))


@pytest.mark.parametrize("override", ["atol=-1.0", "atol=nan", "max_check_gb=-1.0"])
def test_a_negative_tolerance_is_refused_before_any_work(tmp_path, capsys, override):
    """atol=-1 once ran the whole export and then said that a 0.0 logit difference exceeds it."""
    from dgft.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "no-such-run"), override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{override}: must be a finite number >= 0" in err and "no-such-run" not in err


def test_out_that_is_not_an_export_is_never_replaced(tmp_path):
    """The export replaces `out` as a whole: a directory with other files, the run itself or a folder above it is
    refused before anything is written, and stays as it was; an earlier export is replaced."""
    run, _ = make_run(tmp_path, "full")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for out, why in ((mine, "not an earlier dgft export"), (run, "holds the run"), (tmp_path, "holds the run"),
                     (mine / "notes.txt", "is a file")):
        before = sorted(p.name for p in run.iterdir())
        with pytest.raises(RunError, match=why):
            export(export_cfg(run, out=str(out)))
        assert sorted(p.name for p in run.iterdir()) == before and (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and not list(tmp_path.glob(".mine*"))  # no lock
    exported = tmp_path / "exported"
    export(export_cfg(run, out=str(exported)))
    (exported / "export.json").write_text(json.dumps({"source": {}}))  # an earlier export of another state
    export(export_cfg(run, out=str(exported)))
    assert json.loads((exported / "export.json").read_text())["source"] and (exported / "config.json").is_file()
    # files an export did not write are never deleted with it when it is made again (its evaluations are kept)
    (exported / "NOTES.txt").write_text("mine")
    (exported / "mystuff").mkdir()
    record = json.loads((exported / "export.json").read_text())
    (exported / "export.json").write_text(json.dumps({**record, "source": {}}))  # stale: to be made again
    with pytest.raises(RunError, match=r"holds files an export did not write \(NOTES\.txt, mystuff\)"):
        export(export_cfg(run, out=str(exported)))
    assert (exported / "NOTES.txt").read_text() == "mine" and (exported / "mystuff").is_dir()
    (exported / "NOTES.txt").unlink()
    (exported / "mystuff").rmdir()
    # another run's export is not replaced by this run's (nor its evaluations kept under this run's weights)
    record = json.loads((exported / "export.json").read_text())
    assert record["run"] == str(run.resolve())
    (exported / "export.json").write_text(json.dumps({**record, "run": "/elsewhere/other_run", "source": {}}))
    with pytest.raises(RunError, match=r"holds the export of another run \(/elsewhere/other_run;"):
        export(export_cfg(run, out=str(exported)))
    # a folder that cannot be made or written: refused before any model loads
    for out, why in ((mine / "notes.txt" / "sub", "notes.txt is not a directory"),
                     (Path("/proc/dgft-export"), "cannot be created: no directory can be made in /proc")):
        with pytest.raises(RunError, match=why):
            export(export_cfg(run, out=str(out)))


def test_a_moved_run_keeps_its_export(tmp_path, capsys):
    """A run moved (copied back from another machine, renamed) keeps its export: up to date while the run is
    unchanged, and made again inside the run once it changed; only an export outside the run that another path
    made is refused."""
    run, _ = make_run(tmp_path, "full")
    export(export_cfg(run))
    moved = tmp_path / "moved"
    run.rename(moved)
    capsys.readouterr()
    export(export_cfg(moved))
    assert "up to date" in capsys.readouterr().out
    record = json.loads((moved / "export" / "export.json").read_text())
    (moved / "export" / "export.json").write_text(json.dumps({**record, "source": {}}))  # the run changed since
    export(export_cfg(moved))
    assert json.loads((moved / "export" / "export.json").read_text())["run"] == str(moved.resolve())


def test_a_bad_device_is_refused_even_when_the_export_is_up_to_date(tmp_path):
    from dgft.config import ConfigError

    run, _ = make_run(tmp_path, "full")
    export(export_cfg(run))
    with pytest.raises(ConfigError, match="device='tpu'"):
        export(export_cfg(run, device="tpu"))


def test_a_second_export_to_the_same_place_at_once_is_refused(tmp_path):
    """Two exports of one run at once raced to rename their folders into place (the second failed with "Directory
    not empty", a traceback): the second is refused, naming the first; once it has ended, the place is free."""
    import os

    from dgft.runs import RunError, take_lock

    run, _ = make_run(tmp_path, "full")
    with take_lock(run / ".export.lock", RuntimeError):  # as a running `dgft export` of RUN/export holds it
        with pytest.raises(RunError, match=rf"export: another `dgft export` \(pid {os.getpid()}\) is writing it now"):
            export(export_cfg(run))
    assert export(export_cfg(run)) == run / "export"


def test_export_into_an_existing_empty_directory(tmp_path):
    """`out` may be new, empty or an earlier export: an empty directory (made ahead, a mount point) takes the export."""
    from transformers import DiffusionGemmaForBlockDiffusion

    run, trained = make_run(tmp_path, "full")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(export_cfg(run, out=str(empty))) == empty
    assert (empty / "export.json").is_file() and (empty / "config.json").is_file()
    reloaded = DiffusionGemmaForBlockDiffusion.from_pretrained(str(empty))
    assert (logits_of(reloaded) - trained).abs().max() <= 1e-4


def test_missing_config_and_weights(tmp_path):
    run, _ = make_run(tmp_path, "lora")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (run / "adapter" / name).rename(run / name)
        with pytest.raises(RunError, match="adapter"):
            export(export_cfg(run))
        (run / name).rename(run / "adapter" / name)
    with pytest.raises(RunError, match="step-000001"):
        export(export_cfg(run, checkpoint="step-000001"))
    (run / "config.yaml").unlink()
    with pytest.raises(RunError, match="config.yaml"):
        export(export_cfg(run))


def test_cli_prints_run_errors(tmp_path, capsys):

    from dgft.cli import main

    run = tmp_path / "empty-run"
    run.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run)])
    assert exit_info.value.code == 2
    assert "config.yaml: not found" in capsys.readouterr().err


# --- integrity: the 4-bit merge's errors, the "up to date" check, the tokenizer, killed exports ---------------
def make_qlora_run(tmp_path):
    """A QLoRA run (model.quantize=nf4): export takes the streaming merge path."""
    run, _ = make_run(tmp_path, "lora")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.quantize = "nf4"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return run, cfg


def cli_error(args, capsys) -> str:
    from dgft.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_streaming_merge_errors_are_reported_as_export_errors(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run, cfg = make_qlora_run(tmp_path)
    weights = run / "base" / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("q_proj.weight"))
    tensors[name] = torch.zeros(tensors[name].shape[0] + 3, tensors[name].shape[1])
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ExportError, match="has shape"):
        export(export_cfg(run))
    assert "has shape" in cli_error(["export", str(run)], capsys)
    assert not (run / "export").exists() and not list(run.glob(".export.[to]*-*"))

    empty = tmp_path / "empty-base"
    empty.mkdir()
    cfg.model.name, cfg.model.path = "diffusiongemma", str(empty)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(ExportError, match="no model.safetensors"):
        export(export_cfg(run))
    assert "no model.safetensors" in cli_error(["export", str(run)], capsys)
    assert not (run / "export").exists() and not list(run.glob(".export.[to]*-*"))


def test_up_to_date_only_when_the_exported_files_are_intact(tmp_path, capsys):
    from transformers import DiffusionGemmaForBlockDiffusion

    run, trained = make_run(tmp_path, "full")
    out = export(export_cfg(run))
    record = json.loads((out / "export.json").read_text())
    weights = out / "model.safetensors"
    assert record["outputs"]["model.safetensors"]["bytes"] == weights.stat().st_size
    assert {"config.json", "tokenizer_config.json", "dgft_sampler.json"} <= set(record["outputs"])
    good = weights.read_bytes()
    flipped = bytearray(good)
    flipped[-1] ^= 1

    def truncate():
        weights.write_bytes(b"")

    def flip():
        weights.write_bytes(bytes(flipped))

    def old_record():
        (out / "export.json").write_text(json.dumps({k: v for k, v in record.items() if k != "outputs"}))

    for damage, why in ((truncate, "0 bytes"), (weights.unlink, "missing"), (flip, "sha256 differs"),
                        (old_record, "records no output files")):
        damage()
        capsys.readouterr()
        export(export_cfg(run))
        printed = capsys.readouterr().out
        assert "up to date" not in printed and why in printed and "exporting again" in printed
        assert weights.read_bytes() == good
        reloaded = DiffusionGemmaForBlockDiffusion.from_pretrained(str(out))
        assert (logits_of(reloaded) - trained).abs().max() <= 1e-4
    export(export_cfg(run))
    assert "up to date" in capsys.readouterr().out


def test_a_changed_base_or_run_config_is_exported_again(tmp_path, capsys):
    """What the export is made from: a LoRA run's saved base, and the run's config.yaml (the sampler settings that
    travel with the export), as well as the adapter. Each change is a new source: exported again, never up to date."""
    from safetensors.torch import load_file, save_file

    run, _ = make_run(tmp_path, "lora")
    export(export_cfg(run))
    source = json.loads((run / "export" / "export.json").read_text())["source"]

    def other_base():
        f = run / "base" / "model.safetensors"
        tensors = load_file(str(f))
        name = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[name] = tensors[name] + 0.01
        save_file(tensors, str(f), metadata={"format": "pt"})

    def other_sampler():
        cfg = OmegaConf.load(run / "config.yaml")
        cfg.sampler.steps = 40
        (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))

    for change in (other_base, other_sampler):
        change()
        capsys.readouterr()
        export(export_cfg(run))
        assert "up to date" not in capsys.readouterr().out
        now = json.loads((run / "export" / "export.json").read_text())["source"]
        assert now != source
        source = now
    assert json.loads((run / "export" / "dgft_sampler.json").read_text())["sampler"]["steps"] == 40


def test_a_run_without_tokenizer_files_is_refused(tmp_path, capsys):
    run, _ = make_run(tmp_path, "full")
    saved = {p.name: p.read_bytes() for p in (run / "tokenizer").iterdir()}
    assert {"tokenizer_config.json", "tokenizer.json"} <= set(saved)
    for removed in (list(saved), ["tokenizer_config.json"], ["tokenizer.json"]):
        for name in removed:
            (run / "tokenizer" / name).unlink()
        with pytest.raises(RunError, match="tokenizer.*incomplete tokenizer"):
            export(export_cfg(run))
        assert str(run / "tokenizer") in cli_error(["export", str(run)], capsys)
        assert not (run / "export").exists()
        for name in removed:
            (run / "tokenizer" / name).write_bytes(saved[name])
    export(export_cfg(run))
    assert (run / "export" / "tokenizer_config.json").is_file()


def test_killed_exports_leave_no_temp_dirs(tmp_path, capsys):
    """A killed export's `.export.tmp-PID` / `.export.old-PID` go on the next export; a running one's stay."""
    import subprocess
    import sys

    run, _ = make_run(tmp_path, "full")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for name in (f".export.tmp-{dead.pid}", f".export.old-{dead.pid}", f".export.tmp-{live.pid}",
                     f".export.old-{live.pid}"):
            (run / name).mkdir()
            (run / name / "model.safetensors").write_bytes(b"partial")
        (run / "notes.tmp-1").mkdir()  # not an export's temp dir
        export(export_cfg(run))
        assert not (run / f".export.tmp-{dead.pid}").exists() and not (run / f".export.old-{dead.pid}").exists()
        assert (run / f".export.tmp-{live.pid}").is_dir() and (run / f".export.old-{live.pid}").is_dir()
        assert (run / "notes.tmp-1").is_dir() and (run / "export" / "export.json").is_file()

        # killed between its two renames: the previous export sits in `.export.old-PID` and `export` is gone
        (run / "export").rename(run / f".export.old-{dead.pid}")
        capsys.readouterr()
        export(export_cfg(run))
        printed = capsys.readouterr().out
        assert "restored" in printed and "up to date" in printed
        assert not (run / f".export.old-{dead.pid}").exists() and (run / "export" / "export.json").is_file()
    finally:
        live.kill()
        live.wait()


def test_a_lora_run_on_a_pretrained_base_is_merged_shard_by_shard_in_its_dtype(tmp_path):
    """model=diffusiongemma with a LoRA adapter (bf16 base, no 4-bit): streamed like a 4-bit run's, so the merged
    export keeps the base's dtype instead of loading the whole model in fp32 (twice its size in memory and on
    disk); the merged logits match the adapter's on the same base."""
    from safetensors import safe_open
    from transformers import DiffusionGemmaForBlockDiffusion

    run, _ = make_run(tmp_path, "lora")
    base = tmp_path / "pretrained"
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(run / "base"), use_safetensors=True)
    model.to(torch.bfloat16).save_pretrained(str(base))
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.name, cfg.model.path = "diffusiongemma", str(base)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    record_weights(run)  # as a run trained on that base would have
    out = export(export_cfg(run))
    record = json.loads((out / "export.json").read_text())
    assert record["quantize"] == "none" and record["merge"]["merged_tensors"] > 0
    assert record["merged_max_abs_diff"] <= record["atol"] < record["rounding_max_abs_diff"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert (out / "adapter" / "adapter_config.json").exists()
    DiffusionGemmaForBlockDiffusion.from_pretrained(str(out), use_safetensors=True)
    # the model card says whether the run's figures carry over: rounded to bf16 here; unchecked over max_check_gb
    assert "these figures are the unrounded model's" in (out / "README.md").read_text()
    unchecked = export(OmegaConf.merge(export_cfg(run), {"out": str(tmp_path / "unchecked"), "max_check_gb": 0.0}))
    assert "were not compared with the run's" in (unchecked / "README.md").read_text()



def test_a_lora_run_on_a_pretrained_base_is_evaluated_and_exported_in_the_dtype_it_trained_in(tmp_path):
    """The run's base was loaded in bf16 whatever model.dtype said, so a run trained in fp32 was evaluated (and the
    export compared) on a model that never trained, and the card said the export's figures hold. The base now loads
    in model.dtype, or for auto in the dtype run.json recorded; a gap over atol is said on the card."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from dgft.model import load_adapter
    from dgft.runs import load_model, trained_dtype

    run, _ = make_run(tmp_path, "lora")
    base = tmp_path / "pretrained"
    DiffusionGemmaForBlockDiffusion.from_pretrained(str(run / "base"), use_safetensors=True).save_pretrained(str(base))
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.name, cfg.model.path, cfg.model.dtype = "diffusiongemma", str(base), "fp32"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    record_weights(run)
    model = load_model(run, cfg)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    fp32 = load_adapter(DiffusionGemmaForBlockDiffusion.from_pretrained(str(base), dtype=torch.float32), run / "adapter")
    torch.testing.assert_close(logits_of(model), logits_of(fp32), rtol=0, atol=1e-5)
    out = export(export_cfg(run))
    record = json.loads((out / "export.json").read_text())
    assert record["quantization_gap_max_abs_diff"] <= record["atol"]
    assert "The export gives the run's logits" in (out / "README.md").read_text()
    # auto: what the training session chose (run.json), else bf16 on CUDA and fp32 elsewhere
    cfg.model.dtype = "auto"
    assert trained_dtype(run, cfg) == torch.float32  # no run.json
    (run / "run.json").write_text(json.dumps({"sessions": [{"device": "cuda:0"}]}))
    assert trained_dtype(run, cfg) == torch.bfloat16
    (run / "run.json").write_text(json.dumps({"sessions": [{"device": "cuda:0", "dtype": "float32"}]}))
    assert trained_dtype(run, cfg) == torch.float32
    # trained in bf16 on a base stored in fp32: the export (fp32 weights) is not the run's model, and says so
    cfg.model.dtype = "bf16"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    record_weights(run)
    assert {p.dtype for n, p in load_model(run, cfg).named_parameters() if "lora_" not in n} == {torch.bfloat16}
    out = export(OmegaConf.merge(export_cfg(run), {"out": str(tmp_path / "bf16")}))
    record = json.loads((out / "export.json").read_text())
    assert record["quantization_gap_max_abs_diff"] > record["atol"] >= record["merged_max_abs_diff"]
    assert "these figures are the run's model's" in (out / "README.md").read_text()


def test_an_adapter_says_how_it_loads(tmp_path):
    """peft's blank model card said nothing, and plain `PeftModel.from_pretrained` adapts the encoder only (the
    decoder shares its weights through dgft's loader): every saved adapter carries a README saying so."""
    import torch
    from peft import LoraConfig, get_peft_model

    from dgft.checkpoint import save_weights

    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]))
    save_weights(model, tmp_path / "adapter")
    text = (tmp_path / "adapter" / "README.md").read_text()
    assert "dgft.model import load_adapter" in text and "adapts the encoder only" in text


def test_nan_logits_are_never_within_tolerance():
    from dgft.export import _require

    with pytest.raises(ExportError, match="nan exceeds atol"):
        _require(float("nan"), 1e-4, "merged vs adapter")
    _require(1e-5, 1e-4, "merged vs adapter")


def test_a_wrong_shard_by_shard_merge_is_refused(tmp_path, monkeypatch):
    """The streaming export's gate: a merge that gives other logits than the adapter is an error, and nothing is
    exported (only the non-streaming path's gate was ever made to fail)."""
    import dgft.merge as M

    run, _ = make_run(tmp_path, "lora")
    base = tmp_path / "pretrained"
    from transformers import DiffusionGemmaForBlockDiffusion

    DiffusionGemmaForBlockDiffusion.from_pretrained(str(run / "base"), use_safetensors=True).save_pretrained(str(base))
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.name, cfg.model.path = "diffusiongemma", str(base)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    real = M._delta
    monkeypatch.setattr(M, "_delta", lambda tensor, *a, **k: real(tensor, *a, **k) + 0.1)
    with pytest.raises(ExportError, match="merged model vs adapter on the unquantized base"):
        export(export_cfg(run))
    assert not (run / "export").exists() and not list(run.glob(".export.[to]*-*"))


def test_an_export_from_before_model_cards_is_made_again(tmp_path, capsys):
    run, _ = make_run(tmp_path, "full")
    out = export(export_cfg(run))
    record = json.loads((out / "export.json").read_text())
    (out / "README.md").unlink()  # as an export written before dgft wrote a card
    del record["outputs"]["README.md"]
    (out / "export.json").write_text(json.dumps(record))
    capsys.readouterr()
    export(export_cfg(run))
    assert "no model card" in capsys.readouterr().out and (out / "README.md").exists()
    export(export_cfg(run))
    assert "up to date" in capsys.readouterr().out


def test_export_again_lists_evaluations_made_since_in_its_card(tmp_path, capsys):
    """Train, export, evaluate, export again: the weights are up to date and stay, the card gains the evaluation
    (and export.json its new record of the card, so the export stays intact); once more, nothing changes."""
    from dgft.card import with_evaluations
    from dgft.export import _check_outputs, check_export

    run, _ = make_run(tmp_path, "full")
    out = export(export_cfg(run))
    card = (out / "README.md").read_text()
    assert "None recorded when this card was written" in card and with_evaluations(card, run, None) == card
    from dgft.card import model_card

    with pytest.raises(ValueError, match="one paragraph"):  # with_evaluations finds the list after it
        model_card(run, OmegaConf.load(run / "config.yaml"), None, 1, "one\n\ntwo")
    (run / "eval").mkdir()
    (run / "eval" / "easy.json").write_text(json.dumps({"data": "easy.csv", "n": 2, "checkpoint": None,
                                                         "modes": {"rules": {"exact": 0.5}}}))
    weights_mtime = mtimes(out)[out / "model.safetensors"]
    before = (out / "export.json").read_text()
    capsys.readouterr()
    export(export_cfg(run))
    assert "up to date; its model card's lists of evaluations brought up to date" in capsys.readouterr().out
    refreshed = (out / "README.md").read_text()
    assert "| `easy.csv` | 2 | rules exact 50.0% |" in refreshed and "`eval/easy.json`" in refreshed
    assert refreshed.split("## The run's evaluations")[0] == card.split("## The run's evaluations")[0]
    assert _check_outputs(out) is None and mtimes(out)[out / "model.safetensors"] == weights_mtime
    export(export_cfg(run))
    assert capsys.readouterr().out.strip() == f"{out}: up to date"
    # killed between the card and export.json: the next export mends the record, still without touching the weights
    (out / "export.json").write_text(json.dumps({**json.loads((out / "export.json").read_text()),
                                                 "outputs": json.loads(before)["outputs"]}))
    assert _check_outputs(out) is not None
    check_export(out)  # an evaluation of the export meanwhile is not refused: the card is not the model
    export(export_cfg(run))
    assert "brought up to date" in capsys.readouterr().out and _check_outputs(out) is None
    assert (out / "README.md").read_text() == refreshed and mtimes(out)[out / "model.safetensors"] == weights_mtime
    # `dgft eval EXPORT` results join the card at the next export, those of these weights only
    weights = check_export(out)
    (out / "eval").mkdir()
    for name, sha in (("mine", weights["weights_sha256"]), ("older", {"model.safetensors": "0" * 64})):
        (out / "eval" / f"{name}.json").write_text(json.dumps({"data": f"{name}.csv", "n": 3, "export": {
            **weights, "weights_sha256": sha}, "modes": {"rules": {"exact": 1 / 3}}}))
    export(export_cfg(run))
    assert "brought up to date" in capsys.readouterr().out and _check_outputs(out) is None
    own = (out / "README.md").read_text()
    assert "| `mine.csv` | 3 | rules exact 33.3% |  | `THIS_DIR/eval/mine.json` |" in own and "older.csv" not in own
    assert own.startswith(refreshed.rstrip()) and mtimes(out)[out / "model.safetensors"] == weights_mtime
    (out / "README.md").write_text("my own card\n")  # edited by hand: the export is made again, as before
    export(export_cfg(run))
    said = capsys.readouterr().out
    assert "README.md is not the model card dgft wrote; exporting again" in said
    assert "`eval/easy.json`" in (out / "README.md").read_text()


def test_an_export_through_a_link_names_the_run_and_is_readable_as_the_umask_allows(tmp_path):
    """`dgft export outputs/sudoku/latest`: the card names the run the link reached (the link moves with the next
    training). The weights get the mode an ordinary file gets (safetensors 0.8 writes 0o600), in the run too."""
    import os

    run, _ = make_run(tmp_path, "full")
    (tmp_path / "latest").symlink_to(run.name)
    out = export(export_cfg(tmp_path / "latest"))
    assert out == run.resolve() / "export"
    assert f"From the run `{run.resolve()}`" in (out / "README.md").read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    from dgft import checkpoint as ckpt

    ckpt.save_weights(load_model(run, OmegaConf.load(run / "config.yaml")), run / "again")
    assert (run / "again" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_run_is_stopped_early_only_before_its_last_step(tmp_path):
    """A signal during the last step or the final save (the summary says steps == max_steps) stopped nothing."""
    from dgft.runs import stopped_early

    run, _ = make_run(tmp_path, "full")
    cfg = OmegaConf.load(run / "config.yaml")
    planned = cfg.trainer.max_steps
    for summary, note in (({"steps": planned, "stopped_by": None}, None),
                          ({"steps": 3, "stopped_by": "time_limit"}, None),
                          ({"steps": planned, "stopped_by": "SIGTERM"}, None),
                          ({"steps": 3, "stopped_by": "SIGINT"},
                           f"its training was stopped by SIGINT at step 3 of {planned}, before its schedule ended"),
                          ({"stopped_by": "SIGTERM"},
                           f"its training was stopped by SIGTERM before step {planned}, before its schedule ended")):
        (run / "train_summary.json").write_text(json.dumps(summary))
        assert stopped_early(run, cfg) == note
    (run / "train_summary.json").unlink()  # weights without the summary written after them: killed between the two
    assert "no readable train_summary.json" in stopped_early(run, cfg)
    import shutil

    shutil.rmtree(run / "model")
    assert stopped_early(run, cfg) is None  # neither: require_weights says what is wrong


def test_final_weights_changed_since_training_are_refused(tmp_path):
    """train_summary.json records the final weights' files (size, sha256): an edited config.json (a layer fewer, a
    norm's epsilon: from_pretrained loads either without a word) or weights replaced are not the run's model."""
    run, _ = make_run(tmp_path, "full")
    cfg = OmegaConf.load(run / "config.yaml")
    load_model(run, cfg)
    config = json.loads((run / "model" / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 0.5
    (run / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=r"config.json (has \d+ bytes|changed).*not the weights the run trained"):
        load_model(run, cfg)


def test_a_run_config_edited_after_training_is_refused(tmp_path):
    """eval, export and the solver read what the model is (noise, model, task) from config.yaml: an edited copy
    (noise.kind=mask on a uniform-noise model) would measure another model, so it is refused, naming the file; the
    sampler's settings may change (an export carries them)."""
    run, _ = make_run(tmp_path, "full")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("kind: uniform", "kind: mask"))
    with pytest.raises(RunError, match=r"config.yaml: its training settings .* changed since training ended"):
        load_model(run)
    with pytest.raises(RunError, match=r"config.yaml: its training settings .* changed since training ended"):
        export(export_cfg(run))
    # a key this version does not know, which eval says it leaves out: named as such, not as changed settings
    (run / "config.yaml").write_text(text + "bogus_key: 1\n")
    with pytest.raises(RunError, match=r"config.yaml: changed since training ended .*: it holds bogus_key, which this "
                                       r"version of dgft does not know \(added by hand\?\); remove them"):
        load_model(run)
    (run / "config.yaml").write_text(text)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.sampler.steps = 40  # the sampler's alone may change: an export carries them
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    load_model(run)


def test_the_card_lists_a_run_evaluation_only_while_its_weights_are_there(tmp_path):
    """A result records the sha256 of the weights it measured: one made before the weights were replaced (a resumed
    run's) is left off the card, as an export's own are."""
    from dgft.card import _evaluations
    from dgft.checkpoint import weight_hashes

    run, _ = make_run(tmp_path, "full")
    (run / "eval").mkdir()
    now = weight_hashes(run / "model")
    for name, hashes in (("now", now), ("before", {"model.safetensors": "0" * 64}), ("old", None)):
        result = {"data": f"{name}.csv", "n": 2, "checkpoint": None, "modes": {"rules": {"exact": 0.5}}}
        (run / "eval" / f"{name}.json").write_text(json.dumps({**result, **({"weights_sha256": hashes} if hashes
                                                                             else {})}))
    listed = "\n".join(_evaluations(run, None))
    assert "`now.csv`" in listed and "`old.csv`" in listed and "`before.csv`" not in listed  # old: no record kept


def test_a_checkpoint_manifest_lists_every_file_it_seals(tmp_path):
    from dgft import checkpoint as ckpt

    step = tmp_path / "step-000002"
    step.mkdir()
    (step / ckpt.EXTRA).write_text("{}")
    (step / ckpt.TRAINER_STATE).write_bytes(b"torn")
    (step / ckpt.MANIFEST).write_text(json.dumps({"step": 2, "files": {}}))
    assert "does not list extra.json, trainer_state.pt" in ckpt.problem(step)
    (step / ckpt.MANIFEST).write_text(json.dumps({"step": 2, "files": ckpt.file_records(step, [step / ckpt.EXTRA])}))
    assert "does not list trainer_state.pt" in ckpt.problem(step)
    (step / ckpt.MANIFEST).write_text(json.dumps({"step": 2, "files": ckpt.file_records(
        step, [step / ckpt.EXTRA, step / ckpt.TRAINER_STATE])}))
    assert ckpt.problem(step) is None
    (step / ".DS_Store").write_bytes(b"x")  # a copy's hidden file is none of the checkpoint's
    assert ckpt.problem(step) is None


def test_the_settings_digest_is_the_model_not_where_things_are(tmp_path):
    """A pretrained base or tokenizer moved to another disk (model.path), the sampler's settings, the device: not the
    trained model, so they may change; the noise, the model's size, the seed may not."""
    from dgft.runs import trained_settings_digest

    run, _ = make_run(tmp_path, "full")
    before = trained_settings_digest(run)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.path, cfg.sampler.steps, cfg.device, cfg.task.cache_dir = "/elsewhere", 7, "cpu", "/tmp/c"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert trained_settings_digest(run) == before
    for key, value in (("noise.kind", "mask"), ("model.hidden_size", 64), ("seed", 5)):
        changed = OmegaConf.load(run / "config.yaml")
        OmegaConf.update(changed, key, value)
        (run / "config.yaml").write_text(OmegaConf.to_yaml(changed))
        assert trained_settings_digest(run) != before, key
        (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


def test_a_result_from_before_weights_were_recorded_is_replaced_by_a_rerun(tmp_path):
    from dgft.evaluate import claim_output

    (tmp_path / "eval").mkdir()
    settings = {"data": "x.csv", "seed": 0, "limit": 0}
    (tmp_path / "eval" / "x.json").write_text(json.dumps(settings))
    claim_output(tmp_path / "eval", "x", {**settings, "weights_sha256": {"model.safetensors": "ab"}}, False)
    (tmp_path / "eval" / "x.json").write_text(json.dumps({**settings, "weights_sha256": {"model.safetensors": "cd"}}))
    with pytest.raises(Exception, match="weights_sha256"):  # other weights than the result measured
        claim_output(tmp_path / "eval", "x", {**settings, "weights_sha256": {"model.safetensors": "ab"}}, False)


def test_a_tokenizer_that_does_not_load_is_not_exported(tmp_path):
    """Its files are there (tokenizer.json, its config) but AutoTokenizer cannot load them: refused, nothing written."""
    run, _ = make_run(tmp_path, "full")
    (run / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(RunError, match="tokenizer: the run's tokenizer does not load"):
        export(export_cfg(run))
    assert not (run / "export").exists() and not list(run.glob(".export.[to]*-*"))


def test_out_given_as_a_link_exports_where_it_points(tmp_path):
    run, _ = make_run(tmp_path, "full")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    out = export(export_cfg(run, out=str(tmp_path / "link")))
    assert out == tmp_path / "target" and (tmp_path / "target" / "model.safetensors").is_file()
    assert (tmp_path / "link").is_symlink()
    assert not list(tmp_path.glob(".link*")) and not list(tmp_path.glob(".target.[to]*-*"))


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    """Its evaluation and its export's card would name this run as the one it came from."""
    from dgft.runs import checkpoint_dir

    run, _ = make_run(tmp_path, "full")
    other = tmp_path / "other" / "checkpoints" / "step-000180"
    other.mkdir(parents=True)
    with pytest.raises(RunError, match="is not one of .*'s checkpoints .*from the run that saved it"):
        checkpoint_dir(run, str(other))


def test_a_lora_runs_base_is_checked_and_named(tmp_path):
    """The adapter was trained on RUN/base as it was: a base changed since (train_summary.json's `base`) or missing
    is refused, naming it, not loaded (eval's traceback before)."""
    from safetensors.torch import load_file, save_file

    run, _ = make_run(tmp_path, "lora")
    summary = json.loads((run / "train_summary.json").read_text())
    from dgft.checkpoint import file_records, model_files

    summary["base"] = file_records(run / "base", model_files(run / "base"))
    (run / "train_summary.json").write_text(json.dumps(summary))
    load_model(run)
    f = run / "base" / "model.safetensors"
    tensors = load_file(str(f))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 0.01  # the same size
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(RunError, match=r"base: model.safetensors changed since it was recorded .* the adapter was"):
        load_model(run)
    import shutil

    shutil.rmtree(run / "base")
    with pytest.raises(RunError, match=r"base: no base weights \(config.json\) for this LoRA run"):
        load_model(run)
