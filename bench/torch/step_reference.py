"""What PyTorch does on this GPU with the model `equimodal bench --e2e` times.

The model (docs/performance.md, "End-to-end cases"): the CREMA-D setting of AUG, two
ResNet18 encoders trained from scratch (audio 1x257x188 log-spectrograms, visual 3x224x224,
one frame), per modality Linear(512->256)+ReLU, one head 256->6 shared by both, SGD with
momentum 0.9 and weight decay 1e-4, batch 64. Cases, each the median of --iters runs after
--warmup, timed with CUDA events around the whole step:

  joint_step           both modalities' logits through the head, summed; one cross-entropy;
                       one backward through both encoders; one SGD step
  aug_step             AUG's alternating update: an audio step, then a visual step, each
                       with its own backward and SGD step
  eval_forward         both branches, no gradients
  audio_resnet18_step  the audio branch alone (encoder, its Linear, head), forward+backward+SGD

in three precisions: `f32` (TF32 off in cuBLAS and cuDNN: the arithmetic the engine's f32
kernels do), `tf32` (TF32 allowed in both, the fast mode many PyTorch users run) and
`bf16` (autocast). After the timings of each precision, one aug_step from a cleared
allocator gives the memory peaks: `max_memory_allocated` (live tensors) and
`max_memory_reserved` (what the caching allocator held from the driver), in MiB.

Then the ceilings a kernel is measured against: square matmuls in f32 (no TF32), TF32 and
f16; one 3x3 conv (128->128 channels, 28x28, batch 64) forward+backward in f32 and TF32;
and a 1 GiB device copy (GB/s counting the read and the write).

Prints one JSON object (also written to --json). Runs on the GPU machine's python3, which
has PyTorch and torchvision; scripts/gpu_bench.sh calls it in the same session as the
engine's benchmarks, since figures from different sessions are not comparable.
"""
import argparse
import json
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

DEV = "cuda"


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def median_ms(fn, iters, warmup):
    """Median wall time of fn on the device, in ms (CUDA events; queue drained per run)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def resnet18_encoder(in_channels):
    """torchvision's ResNet18 with the stem taking `in_channels` and no classifier: 512-d."""
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


class TwoBranch(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.enc = nn.ModuleDict({"audio": resnet18_encoder(1), "visual": resnet18_encoder(3)})
        self.learner = nn.ModuleDict({m: nn.Sequential(nn.Linear(512, 256), nn.ReLU()) for m in self.enc})
        self.head = nn.Linear(256, classes)

    def logits(self, modality, x):
        return self.head(self.learner[modality](self.enc[modality](x)))


def step_cases(precision, batch, iters, warmup):
    set_tf32(precision != "f32")
    torch.manual_seed(0)
    model = TwoBranch().to(DEV)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x = {"audio": torch.randn(batch, 1, 257, 188, device=DEV),
         "visual": torch.randn(batch, 3, 224, 224, device=DEV)}
    y = torch.randint(0, 6, (batch,), device=DEV)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")

    def update(loss_of):
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_of()
        loss.backward()
        opt.step()

    def joint_step():
        update(lambda: F.cross_entropy(model.logits("audio", x["audio"]) + model.logits("visual", x["visual"]), y))

    def aug_step():
        for m in ("audio", "visual"):
            update(lambda: F.cross_entropy(model.logits(m, x[m]), y))

    def eval_forward():
        with torch.no_grad(), autocast():
            model.logits("audio", x["audio"])
            model.logits("visual", x["visual"])

    def audio_step():
        update(lambda: F.cross_entropy(model.logits("audio", x["audio"]), y))

    out = {name: median_ms(fn, iters, warmup) for name, fn in
           [("joint_step_ms", joint_step), ("aug_step_ms", aug_step),
            ("eval_forward_ms", eval_forward), ("audio_resnet18_step_ms", audio_step)]}
    # memory of one training step from a clean allocator (the model and optimizer state
    # stay: they are part of what a step needs)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    aug_step()
    torch.cuda.synchronize()
    out["aug_step_max_memory_allocated_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    out["aug_step_max_memory_reserved_MiB"] = torch.cuda.max_memory_reserved() / 2**20
    del model, opt, x
    torch.cuda.empty_cache()
    return out


def matmul_tflops(n, dtype, tf32, iters):
    set_tf32(tf32)
    a = torch.randn(n, n, device=DEV, dtype=dtype)
    b = torch.randn(n, n, device=DEV, dtype=dtype)
    ms = median_ms(lambda: a @ b, iters, 3)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def conv_fwd_bwd(tf32, iters):
    set_tf32(tf32)
    x = torch.randn(64, 128, 28, 28, device=DEV, requires_grad=True)
    w = torch.randn(128, 128, 3, 3, device=DEV, requires_grad=True)

    def run():
        F.conv2d(x, w, padding=1).sum().backward()

    ms = median_ms(run, iters, 3)
    fwd_flops = 2 * (64 * 28 * 28) * 128 * (128 * 9)
    return {"ms": ms, "tflops": 3 * fwd_flops / (ms * 1e-3) / 1e12}  # fwd + dX + dW


def copy_gbps(iters):
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), iters, 3)
    return 2 * (1 << 30) / (ms * 1e-3) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=20, help="timed runs per case (median)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precisions", default="f32,tf32,bf16")
    p.add_argument("--no-ceilings", action="store_true", help="only the model steps")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch": a.batch}
    for prec in a.precisions.split(","):
        res[f"steps_{prec}"] = step_cases(prec, a.batch, a.iters, a.warmup)
        print(prec, json.dumps(res[f"steps_{prec}"]), flush=True)
    if not a.no_ceilings:
        # the sizes the targets compare at: f32 (TF32 off) at n = 2048 and 4096, f16 at 4096
        # and more (docs/performance.md, targets)
        for n in (1024, 2048, 4096, 8192):
            res[f"matmul_n{n}_f32_tflops"] = matmul_tflops(n, torch.float32, False, a.iters)
        res["matmul_n8192_tf32_tflops"] = matmul_tflops(8192, torch.float32, True, a.iters)
        for n in (4096, 8192):
            res[f"matmul_n{n}_f16_tflops"] = matmul_tflops(n, torch.float16, False, a.iters)
        res["conv3x3_128_28x28_b64_fb_f32"] = conv_fwd_bwd(False, a.iters)
        res["conv3x3_128_28x28_b64_fb_tf32"] = conv_fwd_bwd(True, a.iters)
        res["copy_1GiB_GBps"] = copy_gbps(a.iters)
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
