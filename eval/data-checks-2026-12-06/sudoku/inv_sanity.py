# dgft's own G.invariant: is it really invariant under dgft's augmentation (else its held-out filter could miss)?
import json, numpy as np
from dgft.tasks.sudoku import grid as G
D = json.load(open('/tmp/rev_h_work/full.json')); rng = np.random.default_rng(5)
S = [G.from_string(r['solution']) for r in D['train'] if r['size'] == 9][:200]
print('G.invariant stable under 400 augmentations:', all(G.invariant(G.augment(s, s, rng)[1]) == G.invariant(s) for s in S for _ in range(2)))
