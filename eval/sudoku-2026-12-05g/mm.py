import torch, time
print(torch.backends.mkldnn.is_available(), getattr(torch.backends.mkldnn, "matmul", None))
a = torch.randn(2592, 128); b = torch.randn(128, 256); c = torch.randn(2592, 256)
def t(f, n=200):
    for _ in range(10): f()
    s = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - s) / n * 1e6
for rep in range(3):
    for prec in ["ieee", "bf16"]:
        torch.backends.mkldnn.matmul.fp32_precision = prec
        print(prec, f"mm {t(lambda: a @ b):.0f} us", f"mmT {t(lambda: c @ b.T):.0f} us", f"lin {t(lambda: torch.nn.functional.linear(a, b.T)):.0f} us",
              f"bwd-w {t(lambda: a.T @ c):.0f} us")
torch.backends.mkldnn.matmul.fp32_precision = "bf16"
print("err", ((a @ b) - (a.double() @ b.double()).float()).abs().max())
