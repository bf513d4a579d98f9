"""Session 26's probe (not adopted, eval/RESULTS.md): each view's self-conditioning reads the views' consensus (their
averaged answer log-probs, in the view's own cells and digits) instead of its own logits. Runs `dgft eval` with
`_Views.scores` patched: `python eval/sudoku-2026-12-05f/consensus_eval.py eval RUN data=... name=...`."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's dgft
from dgft import sampling as S  # noqa: E402

orig = S._Views.scores


def scores(self, canvas, known):
    total = orig(self, canvas, known)  # (B, L, K) mean log-probs, puzzle frame
    if self.self_conditioning:
        cons = total.log_softmax(-1)
        for c, views in enumerate(self.chunks):
            viewed = torch.cat([cons[:, self.cells[v]][:, :, self.digit_back[v]] for v in views])  # (rows, L, K)
            rows, L, K = viewed.shape
            base = torch.full_like(self.sc[c], -1e4)
            self.sc[c] = base.scatter(2, self.choices[None].expand(rows, L, K), viewed)
    return total


S._Views.scores = scores
from dgft.cli import main  # noqa: E402

main(sys.argv[1:])
