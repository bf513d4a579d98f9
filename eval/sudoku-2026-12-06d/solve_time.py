import time, sys
from dgft.solve import load_solver
t0 = time.perf_counter(); solver = load_solver(sys.argv[1]); t1 = time.perf_counter()
p = "003020600900305001001806400008102900700000008006708200002609500800203009005010300"
ans = solver([p], mode="rules"); t2 = time.perf_counter()
print(f"load {t1-t0:.1f} s; one puzzle, rules: {t2-t1:.1f} s; answer {ans[0]}")
