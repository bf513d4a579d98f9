"""Asking a pretrained model through its tokenizer's chat template: the pieces the text tasks share.

Sudoku as text (`sudoku/text.py`) and code infilling with `prompt_format=chat` (`infill/task.py`) put one user
turn through the chat template with the generation prompt as the encoder's prompt, and end the canvas's answer
with the token the model ends its turn with, so the model is asked and answers as it was tuned to.

Example: `tok = load_tokenizer("/models/diffusiongemma")`; `user_turn_ids(tok, "Solve ...")` -> the ids of
`<start_of_turn>user\\nSolve ...<end_of_turn>\\n<start_of_turn>model\\n`; `end_of_turn_id(tok)` -> the id of
`<end_of_turn>` (a tokenizer without one: its EOS).
"""

from __future__ import annotations

END_OF_TURN = ("<end_of_turn>", "<turn|>", "<|im_end|>")  # Gemma 2/3, Gemma 4 (DiffusionGemma), ChatML


def load_tokenizer(path, key: str = "task.tokenizer"):
    """A pretrained tokenizer from a directory or hub id; ModelLoadError naming `key` when there is none."""
    from transformers import AutoTokenizer

    from dgft.model import ModelLoadError, hub_unreachable

    if (why := hub_unreachable(str(path))) is not None:
        raise ModelLoadError(f"{key}={path!r}: {why}; pass model.path=/local/dir holding the checkpoint (its "
                             "tokenizer is read from there), or set task.tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        from pathlib import Path

        hint = "" if Path(str(path)).expanduser().exists() else (
            "; no such local directory, and a hub id needs a reachable hub: pass model.path=/local/dir holding the "
            "checkpoint (its tokenizer is read from there), or set task.tokenizer")
        raise ModelLoadError(f"{key}={path!r}: no tokenizer there ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200]}){hint}") from err


def end_of_turn_id(tokenizer) -> int | None:
    """The token that ends the model's turn: the chat template's end-of-turn if the vocabulary has one, else EOS
    (None: neither)."""
    for name in END_OF_TURN:
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            return tid
    return tokenizer.eos_token_id


def user_turn_text(tokenizer, content: str) -> str:
    """The chat template over one user turn with `content`, then the generation prompt, as text."""
    return _user_turn(tokenizer, content, tokenize=False)


def user_turn_ids(tokenizer, content: str) -> list[int]:
    """`user_turn_text` as token ids, as the template's own tokenization gives them."""
    ids = _user_turn(tokenizer, content, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def _user_turn(tokenizer, content: str, tokenize: bool):
    """apply_chat_template over one user turn; a template that does not render (a syntax error, an error it raises
    itself) is a ModelLoadError naming the tokenizer, not jinja's traceback."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=tokenize)
    except TemplateError as err:
        from dgft.model import ModelLoadError

        raise ModelLoadError(f"the tokenizer at {tokenizer.name_or_path!r}: its chat template does not render "
                             f"({type(err).__name__}: {err}); mend chat_template in its tokenizer_config.json (or "
                             "chat_template.jinja)") from None
