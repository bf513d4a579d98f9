# dump the cached splits to plain json (rows) for the independent checks
import json, sys
from datasets import load_from_disk
d = load_from_disk(sys.argv[1])
json.dump({k: [dict(r) for r in d[k]] for k in d}, open(sys.argv[2], "w"))
print({k: len(d[k]) for k in d})
