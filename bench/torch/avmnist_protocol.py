"""The AV-MNIST protocol of configs/avmnist_*.toml, trained in PyTorch: the figures the
engine's runs are compared with (docs/gpu.md, "PyTorch comparisons").

Data (what src/data/avmnist.rs builds; `equimodal data fetch avmnist` downloads the files):
FSDD recordings in file-name order, takes 0..4 of every speaker and digit for test, the
rest for training; each clip peak-normalised, zero-padded or cut to 1 s at 8 kHz, then
log(|STFT| + 1e-6) with n_fft 256, hop 64, periodic Hann, centred with reflect padding:
1x129x126; one mean and standard deviation over the training spectrograms standardise all
of them (--standardize). Images: the first 8,000 MNIST test images / 255; pool 0..5999
for training clips, 6000..7999 for test clips; each clip paired with an image of its digit
drawn from its pool. Degradations: --pca-energy (each image rebuilt from the principal
components of the training pool holding that share of its variance; 0.25 is the classic
AV-MNIST setting "img25"), --image-noise (Gaussian, pixel scale), --snr-db (white noise
added to the audio at that SNR). One generator seeded by --data-seed (the engine's
`data.seed`, 0 by default and independent of the training seed) draws, in this order, the
image noise, the audio noise and the pairing. With --pairs FILE (`equimodal data pairs
--config configs/avmnist_<preset>.toml --out FILE`), the pairing and the splits are the
engine's instead: each clip trains, validates or tests with the image the engine paired it
with (validation clips, where the configuration has them, only rank the epochs: the test
accuracy of the best one on validation is printed too); the noise draws stay NumPy's. The engine's pairing follows its noise draws, so a file holds one configuration's
pairing: one setting per call (--settings) with --pairs.

Model and training: per modality 4 x (conv 3x3 without bias, batch norm, ReLU, max-pool 2),
widths 32-64-128-256, global average pool (256-d); SGD lr 0.01, momentum 0.9, weight decay
1e-4, batch 64, constant rate, --epochs (25). PyTorch's default initialisation.
Methods (--methods):
  audio, image  one encoder and a linear classifier
  joint         both encoders, concatenated features, one linear classifier
  ogm_ge        joint + OGM-GE: after the backward, the dominant modality's encoder
                gradients are scaled by 1 - tanh(alpha * ratio) (ratio of the summed
                true-class softmax scores of the two halves of the classifier), then
                Gaussian noise with each gradient's own std is added (alpha 0.8)
  aug           AUG's code form: per modality a list of learners Linear(256->256)+ReLU
                feeding one shared head; alternating audio and image updates; after the
                first epoch and every 2nd (epochs // 10) the modality with the lower summed
                true-class probability gets a new learner trained with the boosting loss
                (lambda 0.5); test logits 0.5 audio + 0.5 image
The test accuracy of this protocol swings between epochs, so every epoch is evaluated and
both the last epoch and the mean of the last five are printed (the sweep's rule).

Runs where PyTorch is (the GPU machine's python3; a CPU works, slowly): point --data (or
EQUIMODAL_DATA) at a data root; the default is the per-user directory `equimodal data
list` prints.
"""
import argparse
import gzip
import os
import struct
import sys
import time
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pairs import PairsError, read_pairs

SETTINGS = {"clean": {}, "img25": {"pca_energy": 0.25}, "img25_snr0": {"pca_energy": 0.25, "snr_db": 0.0}}


def data_root(arg):
    """--data, else $EQUIMODAL_DATA, else the per-user directory (as the engine decides)."""
    if arg:
        return Path(arg)
    if os.environ.get("EQUIMODAL_DATA"):
        return Path(os.environ["EQUIMODAL_DATA"])
    if sys.platform == "darwin":
        return Path.home() / "Library/Application Support/equimodal"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", ".")) / "equimodal"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local/share") / "equimodal"


def read_idx_gz(path):
    raw = gzip.open(path).read()
    magic = struct.unpack(">I", raw[:4])[0]
    rank = magic & 0xFF
    dims = struct.unpack(">" + "I" * rank, raw[4:4 + 4 * rank])
    return np.frombuffer(raw[4 + 4 * rank:], np.uint8).reshape(dims)


def mnist_8000(root):
    """The protocol's 8,000 images ([0, 1]) and labels, from the published file or the copy."""
    out = []
    for kind, old in (("images-idx3", "first8000-images-idx3"), ("labels-idx1", "first8000-labels-idx1")):
        p = root / f"mnist/t10k-{kind}-ubyte.gz"
        p = p if p.exists() else root / f"mnist/t10k-{old}-ubyte.gz"
        out.append(read_idx_gz(p)[:8000])
    return out[0].astype(np.float32) / 255.0, out[1].astype(np.int64)


def load_clip(path, n=8000):
    with wave.open(str(path)) as w:
        if w.getframerate() != 8000 or w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise SystemExit(f"{path}: expected 8 kHz 16-bit mono")
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    x = x / (np.abs(x).max() + 1e-6)
    out = np.zeros(n, np.float32)
    out[:min(n, len(x))] = x[:n]
    return out


def pca_rebuild(images, pool, energy):
    flat = images.reshape(len(images), -1)
    mean = flat[pool].mean(0)
    _, s, vt = np.linalg.svd(flat[pool] - mean, full_matrices=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(share, energy)) + 1  # fewest components holding `energy`
    basis = vt[:k]
    return (((flat - mean) @ basis.T) @ basis + mean).reshape(images.shape).astype(np.float32)


def build(root, seed, pca_energy=1.0, image_noise=0.0, snr_db=None, test_takes=5, standardize="train", pairs=None):
    files = sorted((root / "fsdd/recordings").glob("*.wav"), key=lambda p: p.name)
    if not files:
        raise SystemExit(f"no FSDD recordings under {root}/fsdd/recordings: run `equimodal data fetch avmnist`")
    parts = [f.stem.split("_") for f in files]
    digit = np.array([int(p[0]) for p in parts])
    images, labels = mnist_8000(root)
    if pairs is not None:
        try:
            split, paired = read_pairs(pairs, [f.name for f in files], digit.tolist(), labels.tolist())
        except PairsError as e:
            raise SystemExit(str(e))
        split, paired = np.array(split), np.array(paired)
        is_test, is_train = split == "test", split == "train"
    else:
        is_test = np.array([int(p[2]) < test_takes for p in parts])
        is_train = ~is_test
    train_pool, test_pool = np.arange(0, 6000), np.arange(6000, 8000)
    if pca_energy < 1.0:
        images = pca_rebuild(images, train_pool, pca_energy)
    rng = np.random.default_rng(seed)
    if image_noise > 0:
        images = images + rng.normal(0.0, image_noise, images.shape).astype(np.float32)
    clips = [load_clip(f) for f in files]
    if snr_db is not None:
        clips = [c + rng.normal(0.0, np.sqrt(np.mean(c.astype(np.float64) ** 2) / 10 ** (snr_db / 10)), c.shape).astype(np.float32) for c in clips]
    spec = torch.stft(torch.tensor(np.stack(clips)), n_fft=256, hop_length=64, window=torch.hann_window(256),
                      center=True, pad_mode="reflect", return_complex=True)
    spec = torch.log(spec.abs() + 1e-6)[:, None]
    if standardize != "none":
        ref = spec[torch.tensor(is_train)] if standardize == "train" else spec
        spec = (spec - ref.mean()) / ref.std()

    def pair(mask, pool):
        by_digit = [pool[labels[pool] == d] for d in range(10)]
        return np.array([rng.choice(by_digit[digit[i]]) for i in np.flatnonzero(mask)])

    if pairs is None:
        train_img, test_img = pair(is_train, train_pool), pair(is_test, test_pool)
    else:
        train_img, test_img = paired[is_train], paired[is_test]
    part = lambda mask, img: (spec[torch.tensor(mask)], torch.tensor(images[img])[:, None], torch.tensor(digit[mask]))
    # the engine's validation clips, where its pairing has them (model selection only)
    val = part(split == "val", paired[split == "val"]) if pairs is not None and (split == "val").any() else None
    return part(is_train, train_img), part(is_test, test_img), val


class SmallCNN(nn.Module):
    def __init__(self, width=32, depth=4):
        super().__init__()
        layers, c = [], 1
        for i in range(depth):
            w = width * 2**i
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.body, self.dim = nn.Sequential(*layers), c

    def forward(self, x):
        return self.body(x).mean((2, 3))


class Fused(nn.Module):
    """audio/image/joint/ogm_ge: encoders and one linear classifier over the concatenation.
    The per-modality views are the classifier's halves, the bias split evenly (as OGM-GE)."""

    def __init__(self, method):
        super().__init__()
        self.method = method
        self.enc = nn.ModuleList([SmallCNN(), SmallCNN()])
        d = self.enc[0].dim
        self.fc = nn.Linear(d if method in ("audio", "image") else 2 * d, 10)

    def forward(self, a, v):
        if self.method in ("audio", "image"):
            i = 0 if self.method == "audio" else 1
            out = self.fc(self.enc[i]((a, v)[i]))
            return out, out, out
        fa, fv = self.enc[0](a), self.enc[1](v)
        d, w, b = fa.shape[1], self.fc.weight, self.fc.bias
        return self.fc(torch.cat([fa, fv], 1)), fa @ w[:, :d].T + b / 2, fv @ w[:, d:].T + b / 2


def true_class_score(logits, y):
    return F.softmax(logits, 1).gather(1, y[:, None]).sum()


def ogm_ge_modulate(model, oa, ov, y, alpha=0.8):
    with torch.no_grad():
        ratio_v = (true_class_score(ov, y) / true_class_score(oa, y)).item()
        coeff = [1.0, 1.0]
        if ratio_v > 1:
            coeff[1] = 1 - np.tanh(alpha * ratio_v)
        else:
            coeff[0] = 1 - np.tanh(alpha / ratio_v)
        for enc, k in zip(model.enc, coeff):
            for p in enc.parameters():
                if p.grad is not None:
                    p.grad.mul_(k).add_(torch.randn_like(p.grad) * (p.grad.std() + 1e-8))


class Aug(nn.Module):
    def __init__(self, lam=0.5):
        super().__init__()
        self.enc = nn.ModuleList([SmallCNN(), SmallCNN()])
        self.dim, self.lam = self.enc[0].dim, lam
        self.head = nn.Linear(256, 10)
        self.learners = nn.ModuleList([nn.ModuleList([self.new_learner()]) for _ in range(2)])

    def new_learner(self):
        lin = nn.Linear(self.dim, 256)
        nn.init.xavier_normal_(lin.weight)
        nn.init.zeros_(lin.bias)
        return lin

    def outputs(self, m, x):
        f = self.enc[m](x)
        return [self.head(F.relu(lin(f))) for lin in self.learners[m]]

    def loss(self, m, x, y):
        outs = self.outputs(m, x)
        total = sum(outs)
        if len(outs) == 1:
            return F.cross_entropy(total, y), total
        before, new = sum(outs[:-1]), outs[-1]
        p_before = F.softmax(before, 1).gather(1, y[:, None]).squeeze(1).detach()
        boost = -(1 - self.lam * p_before) * F.log_softmax(new, 1).gather(1, y[:, None]).squeeze(1)
        return F.cross_entropy(total, y) + F.cross_entropy(before, y) + boost.mean(), total

    def forward(self, a, v):
        oa, ov = sum(self.outputs(0, a)), sum(self.outputs(1, v))
        return 0.5 * oa + 0.5 * ov, oa, ov


def accuracy(model, data, dev, bs=256):
    model.eval()
    xa, xv, y = data
    hits = np.zeros(3)
    with torch.no_grad():
        for i in range(0, len(y), bs):
            outs = model(xa[i:i + bs].to(dev), xv[i:i + bs].to(dev))
            t = y[i:i + bs].to(dev)
            hits += [(o.argmax(1) == t).sum().item() for o in outs]
    model.train()
    return hits / len(y)


def train(method, tr, te, seed, epochs, dev, bs=64, lr=0.01, va=None):
    """Per epoch the test accuracies (fused, audio view, image view), and with a validation
    set `va` also its fused accuracy (else NaN), as rows of [test fused, audio, image, val]."""
    torch.manual_seed(seed)
    model = (Aug() if method == "aug" else Fused(method)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    xa, xv, y = tr
    check = max(1, epochs // 10)
    history, added = [], [0, 0]
    for ep in range(epochs):
        score = [0.0, 0.0]
        for j in torch.randperm(len(y)).split(bs):
            a, v, t = xa[j].to(dev), xv[j].to(dev), y[j].to(dev)
            if method == "aug":
                for m, x in ((0, a), (1, v)):
                    loss, total = model.loss(m, x, t)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    score[m] += true_class_score(total.detach(), t).item()
                continue
            out, oa, ov = model(a, v)
            opt.zero_grad()
            F.cross_entropy(out, t).backward()
            if method == "ogm_ge" and ep <= 50:
                ogm_ge_modulate(model, oa, ov, t)
            opt.step()
        # evaluated before a check adds a learner, as the official AUG code (train_CREMAD.py
        # evaluates at l. 214, adds at l. 220-228) and the engine do: a learner added now has
        # not been trained
        history.append([*accuracy(model, te, dev), accuracy(model, va, dev)[0] if va is not None else np.nan])
        if method == "aug" and (ep == 0 or (ep + 1) % check == 0):
            ratio = score[0] / score[1]
            weak = 1 if ratio > 1.01 else 0 if ratio < 0.99 else None
            if weak is not None:
                lin = model.new_learner().to(dev)
                model.learners[weak].append(lin)
                opt.add_param_group({"params": list(lin.parameters())})
                added[weak] += 1
    return np.array(history), added


def main():
    p = argparse.ArgumentParser(description="AV-MNIST protocol in PyTorch (see the module docstring)")
    p.add_argument("--data", help="data root (default: $EQUIMODAL_DATA, else the per-user directory)")
    p.add_argument("--settings", default="clean,img25,img25_snr0", help=f"of {', '.join(SETTINGS)}")
    p.add_argument("--methods", default="audio,image,joint,ogm_ge,aug")
    p.add_argument("--seeds", default="0,1", help="training seeds (initialisation and batch order)")
    p.add_argument("--data-seed", type=int, default=0, help="noise and pairing, shared by every training seed")
    p.add_argument("--pairs", help="the engine's pairing and splits (`equimodal data pairs` CSV) instead of drawing them")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--standardize", choices=["train", "all", "none"], default="train")
    a = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    root = data_root(a.data)
    if a.pairs and "," in a.settings:
        raise SystemExit("--pairs holds one configuration's pairing (it follows that configuration's noise draws): give one setting with --settings")
    seeds = [int(s) for s in a.seeds.split(",")]
    print(f"data root {root}, device {dev}, torch {torch.__version__}, {a.epochs} epochs, seeds {seeds}", flush=True)
    for name in a.settings.split(","):
        t0 = time.time()
        tr, te, va = build(root, a.data_seed, standardize=a.standardize, pairs=a.pairs, **SETTINGS[name])
        n_val = 0 if va is None else len(va[2])
        print(f"== {name}: {len(tr[2])} training clips, {n_val} validation clips, {len(te[2])} test clips, spectrograms {tuple(tr[0].shape[1:])}", flush=True)
        for method in a.methods.split(","):
            for seed in seeds:
                hist, added = train(method, tr, te, seed, a.epochs, dev, va=va)
                last5 = hist[-5:].mean(0) * 100
                # best on validation: the test accuracy of the epoch the validation set ranks
                # first (the earliest of ties), as the engine's `compare --select best_val`
                best = f"  best on validation {hist[int(np.argmax(hist[:, 3])), 0] * 100:5.1f}" if va is not None else ""
                extra = f"  learners added audio/image {added[0]}/{added[1]}" if method == "aug" else ""
                print(f"{name:11s} {method:7s} seed {seed}  test fused {hist[-1, 0] * 100:5.1f} (last 5 epochs {last5[0]:5.1f})"
                      f"  audio view {last5[1]:5.1f}  image view {last5[2]:5.1f}{best}{extra}  [{time.time() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
