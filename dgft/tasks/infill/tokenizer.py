"""The embedded model's tokenizer for code: a byte-level BPE trained with `tokenizers` on the training split.

Byte-level, so any text round-trips exactly (indentation, tabs, unicode, odd bytes): `decode(encode(s)) == s`.
The special tokens take the ids Sudoku's take (dgft.model builds every model with those pad, eos, bos and
image ids), then three fill-in-the-middle markers for the prompt:

    [PAD]=0 [EOS]=1 [BOS]=2 [IMG]=3 [BOI]=4 [EOI]=5 [MASK]=6 [SEP]=7 [UNK]=8 [PRE]=9 [SUF]=10 [MID]=11

Source code may contain these strings ("[PAD]" in a tokenizer's source): the tokenizer is saved with
`split_special_tokens=True`, so text is always split into ordinary tokens and only the task places the
special ids. Training on the standard library's training split (8.6 MB, vocab 4096) takes about 2 s.

Example: `tok = train_tokenizer(texts, vocab_size=4096)`; `tok.save_pretrained(run_dir / "tokenizer")`;
`tok.encode("    return x\\n", add_special_tokens=False)` -> a few ids >= 12.
"""

from __future__ import annotations

from typing import Iterable

from dgft.tasks.sudoku.task import SPECIALS as SUDOKU_SPECIALS

SPECIALS = ["[PAD]", "[EOS]", "[BOS]", "[IMG]", "[BOI]", "[EOI]", "[MASK]", "[SEP]", "[UNK]", "[PRE]", "[SUF]", "[MID]"]
PAD, EOS, BOS, IMG, BOI, EOI, MASK, SEP, UNK, PRE, SUF, MID = range(len(SPECIALS))
assert SPECIALS[:9] == SUDOKU_SPECIALS[:9], "the model's special ids come from the Sudoku layout"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """A byte-level BPE with SPECIALS at ids 0..11, as a transformers fast tokenizer (saves with the run)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < len(SPECIALS) + 256:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least {len(SPECIALS) + 256} "
                         "(the special tokens and the 256 bytes)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return wrap(tok)


def wrap(tok):
    """A `tokenizers.Tokenizer` with SPECIALS -> PreTrainedTokenizerFast that never reads specials from text."""
    from transformers import PreTrainedTokenizerFast

    for i, s in enumerate(SPECIALS):
        if tok.token_to_id(s) != i:
            raise ValueError(f"tokenizer: {s} has id {tok.token_to_id(s)}, expected {i}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]",
        mask_token="[MASK]", sep_token="[SEP]", additional_special_tokens=["[IMG]", "[BOI]", "[EOI]", "[PRE]", "[SUF]",
                                                                            "[MID]"],
        padding_side="left", split_special_tokens=True, clean_up_tokenization_spaces=False,
    )
