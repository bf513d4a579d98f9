"""Code infilling for a pretrained tokenizer without fill-in-the-middle markers: the chat-template prompt, the
middle + end-of-turn canvas, prompt_format=auto, pinning in clamped sampling, and a run through the CLI."""

import json

import pytest
import torch

from conftest import CHAT_SPECIALS, CHAT_TEMPLATE, tiny_cfg
from dgft.config import ConfigError
from dgft.tasks import chat
from dgft.tasks.infill import tokenizer as T
from dgft.tasks.infill.task import HOLE, INSTRUCTION, InfillConfig, InfillTask, chat_frame
from test_infill_end_to_end import _train, source

EXAMPLES = [
    {"prefix": "def f(x):\n", "middle": "    y = x + 1\n", "suffix": "    return y\n", "kind": "multi_line"},
    {"prefix": "class K:\n    def m(self, a):\n        b = a - 2\n", "middle": "        return b\n",
     "suffix": "", "kind": "line"},
    {"prefix": "", "middle": "s = '<end_of_turn>'  # [EOS]\n", "suffix": "print(s)\n", "kind": "line"},
    {"prefix": "def g(z):\n    return z", "middle": " * 3", "suffix": "\n", "kind": "random_span"},
]


def chat_code_tokenizer(template: str | None = CHAT_TEMPLATE, vocab_size: int = 400):
    """A byte-level BPE (exact round trip of code) with Gemma-like turn markers and chat template, no FIM markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([source(i) for i in range(8)] + [INSTRUCTION] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]", clean_up_tokenization_spaces=False,
                                   additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    fast.chat_template = template
    return fast


@pytest.fixture(scope="module")
def tok():
    return chat_code_tokenizer()


def _prompt(batch, b: int) -> list[int]:
    return batch["prompt_ids"][b][batch["prompt_mask"][b].bool()].tolist()


def test_prompt_goes_through_the_chat_template_and_the_canvas_holds_the_middle(tok):
    task = InfillTask(InfillConfig(canvas_length=32, prompt_tokens=256), tokenizer=tok)
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    assert task.prompt_format == "chat" and task.end == end and task.pad == tok.pad_token_id
    batch = task.encode(EXAMPLES)
    for b, e in enumerate(EXAMPLES):
        text = tok.decode(_prompt(batch, b))
        assert text == chat.user_turn_text(tok, INSTRUCTION.format(hole=HOLE, prefix=e["prefix"], suffix=e["suffix"]))
        assert text.startswith("<start_of_turn>user\nFill in the missing middle of this Python code")
        assert f"```python\n{e['prefix']}{HOLE}{e['suffix']}\n```<end_of_turn>\n" in text
        assert text.endswith("<start_of_turn>model\n")
        n = int(batch["lengths"][b])
        assert tok.decode(batch["target"][b, :n]) == e["middle"]
        assert batch["target"][b, n] == end and (batch["target"][b, n + 1:] == tok.pad_token_id).all()
        assert batch["scored"][b].sum() == n + 1 and not batch["fixed"][b].any()
        assert torch.allclose(batch["weight"][b, n + 1:], torch.tensor(task.pad_weight))
    assert end not in batch["target"][2, :int(batch["lengths"][2])]  # "<end_of_turn>" in code is text
    assert task.decode(batch["target"]) == [e["middle"] for e in EXAMPLES]
    canvas = batch["target"].clone()
    canvas[0, 1] = end  # the first end token ends the middle
    assert task.decode(canvas)[0] == tok.decode(batch["target"][0, :1])


def test_the_prompt_is_cut_in_the_code_never_in_the_template(tok):
    head, between, tail = chat_frame(tok)
    frame = len(head) + len(between) + len(tail)
    task = InfillTask(InfillConfig(canvas_length=32, prompt_tokens=frame + 12), tokenizer=tok)
    long = {"prefix": source(1) + source(2), "middle": "x = 1\n", "suffix": source(3), "kind": "line"}
    short = {**long, "suffix": "pass\n"}
    batch = task.encode([long, short])
    for b, e in enumerate([long, short]):
        ids = _prompt(batch, b)
        assert len(ids) == frame + 12 and ids[:len(head)] == head and ids[len(ids) - len(tail):] == tail
        code = ids[len(head):len(ids) - len(tail)]
        at = next(i for i in range(len(code)) if code[i:i + len(between)] == between)
        pre, suf = task._ids([e["prefix"]])[0], task._ids([e["suffix"]])[0]
        assert code[:at] == pre[len(pre) - at:]  # the prefix is cut from the left
        kept = code[at + len(between):]
        assert kept == suf[:len(kept)]  # the suffix from the right
        assert len(kept) == (6 if b == 0 else len(suf))  # half each; a short suffix leaves its share to the prefix
    with pytest.raises(ConfigError, match=r"task\.prompt_tokens"):
        InfillTask(InfillConfig(prompt_tokens=frame + 2), tokenizer=tok)


def test_auto_picks_fim_for_the_run_bpe_and_chat_for_a_chat_tokenizer(tok):
    bpe = T.train_tokenizer([source(i) for i in range(8)], vocab_size=300)
    assert InfillTask(InfillConfig(), tokenizer=bpe).prompt_format == "fim"
    assert InfillTask(InfillConfig(), tokenizer=tok).prompt_format == "chat"
    ids = _prompt(InfillTask(InfillConfig(), tokenizer=bpe).encode(EXAMPLES[:1]), 0)
    assert ids[:2] == [T.BOS, T.PRE] and ids[-1] == T.MID  # the FIM prompt, as before
    bpe.chat_template = CHAT_TEMPLATE
    assert InfillTask(InfillConfig(), tokenizer=bpe).prompt_format == "fim"  # markers first
    assert InfillTask(InfillConfig(prompt_format="chat"), tokenizer=bpe).prompt_format == "chat"
    with pytest.raises(ConfigError, match="prompt_format=chat"):  # fim asked of a tokenizer without markers
        InfillTask(InfillConfig(prompt_format="fim"), tokenizer=tok)


def starcoder_like_tokenizer(fim_pad: bool = True):
    """A pretrained-style FIM tokenizer: <fim_*> markers, <|endoftext|> as EOS and BOS, no pad token, and special
    tokens recognised in text (its saved default)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>"] + (["<fim_pad>"] if fim_pad else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([source(i) for i in range(8)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False, additional_special_tokens=specials[1:])


def test_a_fim_tokenizer_without_pad_pads_with_its_fim_pad_and_keeps_special_strings_as_text():
    tok = starcoder_like_tokenizer()
    assert tok.pad_token_id is None and tok("<fim_middle>", add_special_tokens=False)["input_ids"] == [2]
    task = InfillTask(InfillConfig(canvas_length=48, prompt_tokens=64), tokenizer=tok)
    assert task.prompt_format == "fim" and task.pad == tok.convert_tokens_to_ids("<fim_pad>")
    assert task.end == tok.eos_token_id != task.pad
    # code that spells the end and a marker: text, so the middle neither ends early nor loses a piece
    example = {"prefix": "s = '", "middle": "<|endoftext|><fim_middle>'\n", "suffix": "print(s)\n", "kind": "line"}
    target = task.encode([example])["target"]
    row = target[0].tolist()
    end_at = row.index(task.end)
    assert tok.decode(row[:end_at]) == example["middle"] and tok.convert_tokens_to_ids("<fim_middle>") not in row
    assert task.decode(target) == [example["middle"]]
    with pytest.raises(ConfigError, match=r"task\.tokenizer=.*different padding token"):  # no pad, no <fim_pad>
        InfillTask(InfillConfig(canvas_length=48, prompt_tokens=64), tokenizer=starcoder_like_tokenizer(fim_pad=False))


def test_a_tokenizer_with_neither_markers_nor_template_is_refused_naming_both():
    with pytest.raises(ConfigError) as err:
        InfillTask(InfillConfig(), tokenizer=chat_code_tokenizer(template=None))
    assert "task.prompt_format=fim" in str(err.value) and "task.prompt_format=chat" in str(err.value)
    assert "[PRE]" in str(err.value)
    with pytest.raises(ConfigError, match="no chat template"):
        InfillTask(InfillConfig(prompt_format="chat"), tokenizer=chat_code_tokenizer(template=None))


def test_a_chat_template_that_does_not_render_is_named():
    """A template with a syntax error was jinja's traceback from deep in the task's set-up."""
    from dgft.model import ModelLoadError

    broken = chat_code_tokenizer(template="{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ModelLoadError, match=r"its chat template does not render \(TemplateSyntaxError: .*mend "
                                             r"chat_template in its tokenizer_config.json"):
        InfillTask(InfillConfig(prompt_format="chat"), tokenizer=broken)


def test_choices_hold_ordinary_tokens_padding_and_the_end(tok):
    task = InfillTask(InfillConfig(canvas_length=32), tokenizer=tok)
    choices = task.choices()
    assert choices.shape[0] == 32 and choices[0, :2].tolist() == [tok.pad_token_id, task.end]
    others = set(choices[0, 2:].tolist())
    assert not others & {tok.convert_tokens_to_ids(s) for s in CHAT_SPECIALS}
    assert len(others) == len(tok) - len(CHAT_SPECIALS)


def test_a_tokenizer_counting_tokens_past_the_models_embeddings(tok):
    """Tokens past a pretrained model's embeddings were among the answer's choices (the noise drew them) and could
    be read from text: step 1 ended in an IndexError, a run directory left half-made. Special tokens past them (some
    releases count a few) are harmless and pass; a token text or an answer can hold is refused, named."""
    import copy

    from dgft.train import check_pretrained_tokenizer

    n = len(tok)  # the model's embeddings: every token of the fixture
    special = copy.deepcopy(tok)
    special.add_special_tokens({"additional_special_tokens": ["<image_soft_token>"]})
    assert len(special) == n + 1
    check_pretrained_tokenizer(InfillTask(InfillConfig(canvas_length=32), tokenizer=special), n)
    extra = copy.deepcopy(tok)
    extra.add_tokens(["<extra_a>", "<extra_b>"])  # ordinary added tokens: text holding them is read into them
    with pytest.raises(ConfigError, match=rf"task.tokenizer: 2 of its tokens that reach the model \(text, answers, the "
                                          rf"prompt's frame\) are past the model's {n} embeddings \(model.path\), the first '<extra_a>' "
                                          rf"\(id {n}\)"):
        check_pretrained_tokenizer(InfillTask(InfillConfig(canvas_length=32), tokenizer=extra), n)
    with pytest.raises(ConfigError, match="past the model's 300 embeddings"):  # the tokenizer of another model
        check_pretrained_tokenizer(InfillTask(InfillConfig(canvas_length=32), tokenizer=tok), 300)
    # special tokens the task puts in front of the model: the chat template's, and absorbing noise's mask token
    framed = copy.deepcopy(tok)
    framed.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    framed.chat_template = CHAT_TEMPLATE.replace("<start_of_turn>", "<|im_start|>")
    with pytest.raises(ConfigError, match=rf"the first '<\|im_start\|>' \(id {n}\)"):
        check_pretrained_tokenizer(InfillTask(InfillConfig(canvas_length=32), tokenizer=framed), n)
    masked = copy.deepcopy(tok)
    masked.add_special_tokens({"mask_token": "<new_mask>"})
    task = InfillTask(InfillConfig(canvas_length=32), tokenizer=masked)
    check_pretrained_tokenizer(task, n)  # uniform noise never writes it
    with pytest.raises(ConfigError, match=rf"the first '<new_mask>' \(id {n}\)"):
        check_pretrained_tokenizer(task, n, mask_noise=True)


@pytest.mark.parametrize("mode", ["clamped", "free"])
def test_sampling_keeps_the_pinned_canvas_prefix_and_oracle_end(tok, mode):
    from dgft.model import build_tiny
    from dgft.sampling import sample

    cfg = tiny_cfg(model={"canvas_length": 32}, sampler={"steps": 4})
    task = InfillTask(InfillConfig(canvas_length=32, canvas_prefix_tokens=3), tokenizer=tok)
    batch = task.encode(EXAMPLES, oracle_length=[True, False, True, False])
    assert batch["fixed"][:, :3].all() and batch["fixed"][0, 3 + int(batch["lengths"][0]):].all()
    tail = task._ids([EXAMPLES[1]["prefix"]])[0][-3:]
    assert batch["target"][1, :3].tolist() == tail
    model = build_tiny(cfg.model, task.vocab_size, seed=0).eval()
    res = sample(model, batch, task, cfg.sampler, mode=mode, generator=torch.Generator().manual_seed(0))
    pinned = batch["fixed"]
    assert torch.equal(res.canvas[pinned], batch["target"][pinned])
    if mode == "clamped":  # the true length given: no padding or end token before it
        for b in (0, 2):
            middle = res.canvas[b, 3:3 + int(batch["lengths"][b])]
            assert not torch.isin(middle, torch.tensor([task.pad, task.end])).any()
    assert all(isinstance(m, str) for m in task.decode(res.canvas))


def test_infill_eval_seeds_each_example_and_sample_by_its_place(tok):
    """`dgft eval`'s infill sampling (sample_middles): example i's sample k draws from its own generator, seeded by
    (seed, i, k), so the first examples alone or one per batch get the middles of the whole evaluation, at
    temperature > 0 too. float64, where a batch's shape moves no logit enough to turn a choice."""
    from dgft.model import build_tiny
    from dgft.tasks.infill.evaluate import sample_middles

    cfg = tiny_cfg(model={"canvas_length": 32}, sampler={"steps": 6, "temperature": 0.7})
    task = InfillTask(InfillConfig(canvas_length=32), tokenizer=tok)
    model = build_tiny(cfg.model, task.vocab_size, seed=0).eval().double()

    def middles(examples, size, mode, seed=0):
        batches = [task.encode(examples[i:i + size]) for i in range(0, len(examples), size)]
        return sample_middles(model, task, batches, len(examples), cfg.sampler, cfg, mode, "test", 2, seed)[0]

    for mode in ("free", "clamped"):
        whole = middles(EXAMPLES, 4, mode)
        assert middles(EXAMPLES[:3], 1, mode) == whole[:3] and middles(EXAMPLES, 3, mode) == whole
        assert middles(EXAMPLES, 4, mode, seed=1) != whole and any(a != b for a, b in whole)  # samples differ


def test_chat_infill_trains_and_evaluates_through_the_cli(tok, tmp_path):
    """recipe=infill with task.tokenizer at a saved chat tokenizer (the pretrained path, minus the weights)."""
    from dgft.cli import main
    from dgft.runs import load_tokenizer

    tok.save_pretrained(tmp_path / "tok")
    run = tmp_path / "run"
    frame = sum(map(len, chat_frame(tok)))
    _train(tmp_path, run, "trainer.max_steps=2", f"task.tokenizer={tmp_path / 'tok'}",
           f"task.prompt_tokens={frame + 32}")
    saved = load_tokenizer(run)
    assert saved.chat_template == CHAT_TEMPLATE and len(saved) == len(tok)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("clamped_exact" in r for r in rows)
    main(["eval", str(run), "limit=3"])
    result = json.loads((run / "eval" / "heldout.json").read_text())
    assert set(result["rows"]) == {"free/model", "free/oracle", "clamped/model", "clamped/oracle"}
    assert 0 < result["n"] <= 3


def test_an_unreachable_tokenizer_says_to_pass_a_local_model_path(tmp_path, monkeypatch):
    """recipe=sudoku_lora's default hub id with no hub: the error said nothing of model.path."""
    from transformers import AutoTokenizer

    from dgft.model import ModelLoadError
    from dgft.tasks.chat import load_tokenizer

    def unreachable(path, *args, **kwargs):  # what transformers raises without a hub (without waiting for it)
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {path}.")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", unreachable)
    with pytest.raises(ModelLoadError, match=r"task\.tokenizer='nobody/no-such-model'.*pass model\.path=/local/dir"):
        load_tokenizer("nobody/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as err:  # a local directory without a tokenizer: no hub advice
        load_tokenizer(tmp_path / "empty")
    assert "model.path" not in str(err.value)


def test_a_hub_id_without_a_hub_is_named_in_seconds(tmp_path, monkeypatch):
    """recipe=sudoku_lora without model.path: transformers retried the hub for about a minute (32 warnings) before
    failing. A hub id with no local copy, no cached one and no hub that answers is named at once, for model.path and
    for a text task's tokenizer; a local path or a cached copy is left to the loaders."""
    import socket

    import huggingface_hub

    from dgft import model as M
    from dgft.tasks.chat import load_tokenizer

    tried = []

    def refused(address, timeout=None):
        tried.append((address, timeout))
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for name in M.PROXY_VARIABLES:  # a machine's own proxy would skip the check
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(M.ModelLoadError, match=r"model\.path='nobody/no-such-model': no local directory, no copy in "
                                               r"the hub cache, and the hub \(.+\) cannot be reached .*Connection "
                                               r"refused.*; pass model\.path=/local/dir"):
        M.require_path("nobody/no-such-model")
    with pytest.raises(M.ModelLoadError, match=r"task\.tokenizer='nobody/no-such-model': no local directory"):
        load_tokenizer("nobody/no-such-model")
    assert tried and all(timeout == 3.0 for _, timeout in tried)
    assert M.hub_unreachable(str(tmp_path)) is None  # a local directory: never the network
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: "/cache/config.json")
    assert M.hub_unreachable("nobody/cached") is None
    tokenizer_only = object()  # what the cache answers for a file it knows the repo lacks (a tokenizer's config.json)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name: "/cache/tokenizer.json" if name == "tokenizer.json" else tokenizer_only)
    assert M.hub_unreachable("nobody/a-tokenizer") is None
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    for name in M.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert M.hub_unreachable("nobody/no-such-model") == "HF_HUB_OFFLINE is set and the hub cache holds no copy"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # the hub's client goes through it: not tried
    tried.clear()
    assert M.hub_unreachable("nobody/no-such-model") is None and not tried
