# are the 4x4 rows of sizes=[4] the same as those of sizes=[9,4]? (justifies the sizes=[4] shortcut above)
from dgft.cli import compose_train
from dgft.data import build_splits
ov = ["recipe=sudoku_gpu", "task.base_puzzles=300"]
a = build_splits(compose_train([*ov, "task.cache_dir=/tmp/rev_h_work/sz_a"]).task, 0, workers=1, log=lambda m: None)
b = build_splits(compose_train([*ov, "task.cache_dir=/tmp/rev_h_work/sz_b", "task.sizes=[4]", "task.size_weights=[1.0]"]).task, 0, workers=1, log=lambda m: None)
for k in ("train", "heldout"):
    ra = [dict(r) for r in a[k] if r["size"] == 4]; rb = [dict(r) for r in b[k]]
    print(k, len(ra), len(rb), "identical:", ra == rb)
