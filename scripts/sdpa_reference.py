"""PyTorch scaled_dot_product_attention in f32, timed like `equimodal bench`'s attention cases.

Runs on the GPU machine's own python3 (PyTorch is there), in the same session as the
benchmark (scripts/gpu_bench.sh calls it): B 64, H 8, L = S in {128, 512, 1024, 2048} with
Dh 64, and L 1024 with Dh 32 and 128; forward and forward + backward; CUDA events, median
of 10 after 3 warm-up runs. FLOPs counted as in src/bench/cases.rs (fwd 4·B·H·L·S·Dh,
fwd + bwd 3.5× that), so the GFLOP/s columns compare directly.
"""
import statistics

import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def timed(fn, reps=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  f32, TF32 off")
    print(f"{'case':22s} {'fwd ms':>9s} {'GFLOP/s':>9s} {'fb ms':>9s} {'GFLOP/s':>9s}")
    cases = [(l, 64) for l in (128, 512, 1024, 2048)] + [(1024, 32), (1024, 128)]
    for l, dh in cases:
        b, h = 64, 8
        q, k, v = (torch.randn(b, h, l, dh, device="cuda", requires_grad=True) for _ in range(3))
        g = torch.randn(b, h, l, dh, device="cuda")
        fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v))

        def fwd_bwd():
            F.scaled_dot_product_attention(q, k, v).backward(g)

        fb = timed(fwd_bwd)
        flops = 4.0 * b * h * l * l * dh
        name = f"sdpa_L{l}" + ("" if dh == 64 else f"_d{dh}")
        print(f"{name:22s} {fwd:9.3f} {flops / fwd / 1e6:9.0f} {fb:9.3f} {3.5 * flops / fb / 1e6:9.0f}", flush=True)
        del q, k, v, g
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
