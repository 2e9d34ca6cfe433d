#!/usr/bin/env python3
"""The official Tf-KD CIFAR / Tiny-ImageNet recipe in PyTorch, self-contained.

The reference side of docs/VALIDATION.md: one run of the recipe that
`tfkd train` runs, written as the official code
(yuanli2333/Teacher-free-Knowledge-Distillation: main.py, train_kd.py,
my_loss_function.py, data_loader.py, model/*.py) does it, on the same binary
files tfkd reads, with tfkd's `width_divisor` narrowing reproduced exactly
(crates/tfkd-zoo/src/models/{resnet,mobilenet_v2}.rs `thinned`).

What it reproduces (docs/PAPER.md §2, §3.1, §5):
  * models: CIFAR ResNet18 (model/resnet.py, kuangliu style) and MobileNetV2
    (model/mobilenetv2.py, 1x1 pad-1 stem), global average pooling as tfkd
    (equal to the original's avg_pool2d(4) at 32x32; at 64x64 the original's
    fixed pool would fail), PyTorch's default initialisation;
  * data: CIFAR-10 binary records (cifar10-mini train.bin/test.bin) and the
    tiny-imagenet-10 records (train.bin/val.bin, 64x64); transforms
    RandomCrop(32, 4) -> RandomHorizontalFlip -> RandomRotation(15) ->
    ToTensor -> Normalize(CIFAR-100 statistics) on CIFAR; RandomRotation(20) ->
    RandomHorizontalFlip -> ToTensor -> Normalize(Tiny) on Tiny-ImageNet;
    shuffled loader, drop_last False; where torchvision (or Pillow) is
    missing, as on a GPU machine with PyTorch alone and no network, the same
    augmentations in plain torch (`TensorPipeline`: same distributions,
    other random draws; metrics.json's `transforms` says which ran);
  * SGD momentum 0.9, weight decay 5e-4, lr = lr * batch / 128; one warm-up
    epoch, batch i (1-based) at lr * i / (N + 1e-8); then MultiStepLR x gamma
    at the given (0-based) epochs;
  * losses: baseline CE; LSR as loss_label_smoothing (1 - eps on the label,
    eps / (K - 1) elsewhere, summed over classes, batch mean); Tf-KD_reg as
    loss_kd_regularization: (1 - a) CE + a * m * KLDivLoss()(log_softmax(z),
    softmax(p^d / T)), p^d = 0.99 on the label, 0.01 / (K - 1) elsewhere,
    KLDivLoss with its default (elementwise mean) reduction.

Writes <out>/metrics.json (config, parameter count, one record per epoch:
lr of the last batch, train loss (image-weighted mean), train top-1, test loss,
test top-1, seconds) and <out>/metrics.csv.

Usage:
  torch_train.py --data-dir DIR --dataset cifar10-mini --model resnet18 \
      --width-divisor 8 --method baseline --epochs 15 --milestones 5,9,12 \
      --seed 0 --threads 1 --out OUT_DIR
"""
import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # the official pipeline: torchvision's transforms on PIL images
    from PIL import Image
    from torchvision import transforms
except ImportError:  # a machine with PyTorch alone (a GPU box without a network)
    Image = transforms = None

# ---------------------------------------------------------------------------
# width narrowing, as tfkd-zoo (crates/tfkd-zoo/src/models/mod.rs)
# ---------------------------------------------------------------------------


def div_ceil_multiple(c, d, multiple=1):
    """ceil(ceil(c / d) / m) * m, at least m (tfkd_zoo::models::div_ceil_multiple)."""
    m = max(multiple, 1)
    d = max(d, 1)
    q = -(-c // d)
    return max(-(-q // m), 1) * m


# ---------------------------------------------------------------------------
# models (official model/resnet.py and model/mobilenetv2.py)
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet18 (basic blocks [2, 2, 2, 2]); global pooling as tfkd."""

    def __init__(self, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem=64, num_classes=10):
        super().__init__()
        self.in_planes = stem
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        for i, (n, w) in enumerate(zip(blocks, widths)):
            setattr(self, "layer%d" % (i + 1), self._make_layer(w, n, 1 if i == 0 else 2))
        self.linear = nn.Linear(widths[3], num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes, d):
    """ResNetConfig::resnet18().thinned(d): stem and stage widths ceil-divided."""
    widths = tuple(div_ceil_multiple(w, d) for w in (64, 128, 256, 512))
    return ResNet((2, 2, 2, 2), widths, div_ceil_multiple(64, d), num_classes)


class LinearBottleNeck(nn.Module):
    def __init__(self, in_channels, out_channels, stride, t=6):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, in_channels * t, 1),
            nn.BatchNorm2d(in_channels * t),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels * t, in_channels * t, 3, stride=stride, padding=1, groups=in_channels * t),
            nn.BatchNorm2d(in_channels * t),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels * t, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        )
        self.stride, self.in_channels, self.out_channels = stride, in_channels, out_channels

    def forward(self, x):
        r = self.residual(x)
        if self.stride == 1 and self.in_channels == self.out_channels:
            r = r + x
        return r


MBV2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1)]


def mbv2_thinned(d):
    """MobileNetV2Config::paper().thinned(d), rule for rule: widths ceil-divided;
    a stride-1 stage keeps an identity shortcut exactly when the original has
    one (equal widths stay equal; different widths that round to the same value
    get +1)."""
    stem = div_ceil_multiple(32, d)
    stages = []
    prev, prev_thin = 32, stem
    for t, c0, n, s in MBV2_STAGES:
        c = div_ceil_multiple(c0, d)
        if s == 1:
            if prev == c0:
                c = prev_thin
            elif prev_thin == c:
                c += 1
        prev, prev_thin = c0, c
        stages.append((t, c, n, s))
    return stem, stages, div_ceil_multiple(1280, d)


class MobileNetV2(nn.Module):
    """model/mobilenetv2.py: 1x1 pad-1 stem (32x32 -> 34x34), conv head."""

    def __init__(self, stem, stages, last, class_num=10):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, stem, 1, padding=1), nn.BatchNorm2d(stem), nn.ReLU6(inplace=True))
        cin = stem
        for i, (t, c, n, s) in enumerate(stages):
            if i in (0, 6):
                m = LinearBottleNeck(cin, c, s, t)
            else:
                m = nn.Sequential(*([LinearBottleNeck(cin, c, s, t)] + [LinearBottleNeck(c, c, 1, t) for _ in range(n - 1)]))
            setattr(self, "stage%d" % (i + 1), m)
            cin = c
        self.conv1 = nn.Sequential(nn.Conv2d(cin, last, 1), nn.BatchNorm2d(last), nn.ReLU6(inplace=True))
        self.conv2 = nn.Conv2d(last, class_num, 1)

    def forward(self, x):
        x = self.pre(x)
        for i in range(7):
            x = getattr(self, "stage%d" % (i + 1))(x)
        x = self.conv1(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.conv2(x).view(x.size(0), -1)


def mobilenet_v2(num_classes, d):
    stem, stages, last = mbv2_thinned(d)
    return MobileNetV2(stem, stages, last, num_classes)


MODELS = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}

# ---------------------------------------------------------------------------
# data (the binary records tfkd reads; official data_loader.py transforms)
# ---------------------------------------------------------------------------

CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2302, 0.2265, 0.2262)

DATASETS = {
    # name: (folder, train file, test file, side, classes)
    "cifar10-mini": ("cifar10-mini", "train.bin", "test.bin", 32, 10),
    "tiny-imagenet-10": ("tiny-imagenet-10", "train.bin", "val.bin", 64, 10),
}


def read_records(path, side):
    """CIFAR-10 binary records: 1 label byte, then R, G, B planes (side x side)."""
    rec = 1 + 3 * side * side
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % rec:
        sys.exit(f"{path}: size {raw.size} is not a multiple of the record size {rec}")
    raw = raw.reshape(-1, rec)
    labels = raw[:, 0].astype(np.int64)
    images = raw[:, 1:].reshape(-1, 3, side, side).transpose(0, 2, 3, 1).copy()  # N, H, W, C
    return images, labels


class RecordDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        if transforms is None:  # tensors for `TensorPipeline`: C, H, W in [0, 1]
            self.images = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
        else:
            self.images = [Image.fromarray(im) for im in images]
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


class TensorPipeline:
    """The same augmentations in plain torch, where torchvision is missing:
    RandomCrop(side, padding) with zero padding, RandomHorizontalFlip(0.5),
    RandomRotation(degrees) about the centre with nearest sampling and zero
    fill (torchvision's defaults), in the official order (crop, flip,
    rotation), then Normalize. Same distributions, not the same random
    draws as torchvision; `transforms` in metrics.json says which ran."""

    def __init__(self, mean, std, crop_padding=0, rotation=0.0, flip_first=False):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.crop_padding, self.rotation, self.flip_first = crop_padding, rotation, flip_first

    def _flip(self, x):
        return x.flip(2) if torch.rand(1).item() < 0.5 else x

    def __call__(self, x):
        if self.crop_padding:
            p = self.crop_padding
            h, w = x.shape[1:]
            padded = F.pad(x, (p, p, p, p))
            i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = padded[:, i:i + h, j:j + w]
        if self.flip_first:
            x = self._flip(x)
        if self.rotation:
            angle = math.radians(torch.empty(1).uniform_(-self.rotation, self.rotation).item())
            cos, sin = math.cos(angle), math.sin(angle)
            theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).unsqueeze(0)
            grid = F.affine_grid(theta, (1, *x.shape), align_corners=False)
            x = F.grid_sample(x.unsqueeze(0), grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
        if not self.flip_first:
            x = self._flip(x)
        return (x - self.mean) / self.std


def pipelines(dataset):
    if transforms is None:
        if dataset == "cifar10-mini":
            train = TensorPipeline(CIFAR100_MEAN, CIFAR100_STD, crop_padding=4, rotation=15.0, flip_first=True)
            return train, TensorPipeline(CIFAR100_MEAN, CIFAR100_STD)
        train = TensorPipeline(TINY_MEAN, TINY_STD, rotation=20.0)
        return train, TensorPipeline(TINY_MEAN, TINY_STD)
    if dataset == "cifar10-mini":
        norm = transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)
        train = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(15),
            transforms.ToTensor(),
            norm,
        ])
    else:
        norm = transforms.Normalize(TINY_MEAN, TINY_STD)
        train = transforms.Compose([
            transforms.RandomRotation(20),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ])
    test = transforms.Compose([transforms.ToTensor(), norm])
    return train, test


# ---------------------------------------------------------------------------
# losses (official my_loss_function.py)
# ---------------------------------------------------------------------------


def loss_label_smoothing(outputs, labels, eps):
    n, c = outputs.shape
    smoothed = torch.full((n, c), eps / (c - 1), dtype=outputs.dtype, device=outputs.device)
    smoothed.scatter_(1, labels.unsqueeze(1), 1 - eps)
    return -torch.sum(F.log_softmax(outputs, dim=1) * smoothed) / n


def loss_kd_regularization(outputs, labels, alpha, temperature, multiplier, correct_prob=0.99):
    loss_ce = F.cross_entropy(outputs, labels)
    k = outputs.size(1)
    teacher = torch.full_like(outputs, (1 - correct_prob) / (k - 1))
    teacher.scatter_(1, labels.unsqueeze(1), correct_prob)
    soft = nn.KLDivLoss()(F.log_softmax(outputs, dim=1), F.softmax(teacher / temperature, dim=1)) * multiplier
    return (1.0 - alpha) * loss_ce + alpha * soft


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------


def lr_at(base, epoch, it, iters, warmup_epochs, milestones, gamma):
    """tfkd_core::schedule::LrSchedule::lr: warm-up per iteration, then MultiStep."""
    if epoch < warmup_epochs:
        step = epoch * iters + it + 1
        return base * step / (warmup_epochs * iters + 1e-8)
    return base * gamma ** sum(1 for m in milestones if m <= epoch)


def evaluate(model, loader, device):
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += y.numel()
    return 100.0 * correct / total, loss_sum / total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("TFKD_DATA_DIR"), help="folder with cifar10-mini/ and tiny-imagenet-10/ (default $TFKD_DATA_DIR)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10-mini")
    p.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    p.add_argument("--width-divisor", type=int, default=1)
    p.add_argument("--method", choices=["baseline", "lsr", "tf-kd-reg"], default="baseline")
    p.add_argument("--epsilon", type=float, default=0.1, help="LSR epsilon")
    p.add_argument("--alpha", type=float, default=0.1, help="Tf-KD_reg alpha (reg_alpha)")
    p.add_argument("--temperature", type=float, default=20.0, help="Tf-KD_reg T (reg_temperature)")
    p.add_argument("--multiplier", type=float, default=100.0, help="Tf-KD_reg multiplier")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--milestones", default="60,120,160", help="0-based epochs at whose start lr *= gamma")
    p.add_argument("--gamma", type=float, default=0.2)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="before the batch/128 scaling")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: cudnn.benchmark, TF32 convolutions: PyTorch's defaults)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for the training set")
    p.add_argument("--params-only", action="store_true", help="print the parameter count and exit")
    p.add_argument("--out", help="output folder (metrics.json, metrics.csv)")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    folder, train_file, test_file, side, classes = DATASETS[a.dataset]
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = MODELS[a.model](classes, a.width_divisor).to(device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{a.model} /{a.width_divisor} K={classes}: {n_params} parameters", flush=True)
    if a.params_only:
        return
    if not a.data_dir or not a.out:
        sys.exit("--data-dir (or TFKD_DATA_DIR) and --out are required")

    root = os.path.join(a.data_dir, folder)
    train_tf, test_tf = pipelines(a.dataset)
    xtr, ytr = read_records(os.path.join(root, train_file), side)
    xte, yte = read_records(os.path.join(root, test_file), side)
    gen = torch.Generator()
    gen.manual_seed(a.seed)
    train_loader = torch.utils.data.DataLoader(RecordDataset(xtr, ytr, train_tf), batch_size=a.batch_size,
                                               shuffle=True, drop_last=False, num_workers=a.workers, generator=gen)
    test_loader = torch.utils.data.DataLoader(RecordDataset(xte, yte, test_tf), batch_size=256, shuffle=False, num_workers=0)

    base_lr = a.lr * a.batch_size / 128
    milestones = [int(m) for m in a.milestones.split(",") if m.strip()]
    opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=a.momentum, weight_decay=a.weight_decay)
    iters = len(train_loader)

    def loss_fn(out, y):
        if a.method == "baseline":
            return F.cross_entropy(out, y)
        if a.method == "lsr":
            return loss_label_smoothing(out, y, a.epsilon)
        return loss_kd_regularization(out, y, a.alpha, a.temperature, a.multiplier)

    os.makedirs(a.out, exist_ok=True)
    config = {k: v for k, v in vars(a).items() if k not in ("data_dir", "out")}
    config.update(params=n_params, base_lr=base_lr, iters_per_epoch=iters, torch=torch.__version__,
                  transforms="torchvision" if transforms is not None else "torch (TensorPipeline)")
    config["state_shapes"] = {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    history = []
    for epoch in range(a.epochs):
        t0 = time.time()
        model.train()
        loss_sum, correct, seen, lr = 0.0, 0, 0, base_lr
        for it, (x, y) in enumerate(train_loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = lr_at(base_lr, epoch, it, iters, a.warmup_epochs, milestones, a.gamma)
            for g in opt.param_groups:
                g["lr"] = lr
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * y.numel()
            correct += (out.argmax(1) == y).sum().item()
            seen += y.numel()
        if not math.isfinite(loss_sum):
            print(f"epoch {epoch + 1}: non-finite loss", flush=True)
        test_top1, test_loss = evaluate(model, test_loader, device)
        rec = dict(epoch=epoch + 1, lr=lr, train_loss=loss_sum / seen, train_top1=100.0 * correct / seen,
                   test_loss=test_loss, test_top1=test_top1, seconds=time.time() - t0)
        history.append(rec)
        print(json.dumps(rec), flush=True)
        best = max(history, key=lambda r: r["test_top1"])
        summary = dict(best_epoch=best["epoch"], best_top1=best["test_top1"], last_epoch=rec["epoch"], last_top1=rec["test_top1"])
        tmp = os.path.join(a.out, "metrics.json.tmp")
        with open(tmp, "w") as f:
            json.dump(dict(config=config, epochs=history, summary=summary, finished=epoch + 1 == a.epochs), f, indent=1)
        os.replace(tmp, os.path.join(a.out, "metrics.json"))
    with open(os.path.join(a.out, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0].keys()))
        w.writeheader()
        w.writerows(history)


if __name__ == "__main__":
    main()
