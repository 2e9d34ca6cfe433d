#!/usr/bin/env python3
"""Golden values for tfkd-core, computed by PyTorch (CPU) in float64.

Writes fixtures/core/losses.safetensors + losses.json (loss values and
gradients w.r.t. the student logits), fixtures/core/sgd.safetensors + sgd.json
(5 SGD steps), fixtures/core/adam.safetensors + adam.json (6 Adam steps) and
fixtures/core/schedules.json (learning rates of the official loop). The loss functions below are copied from the official repository's
my_loss_function.py (yuanli2333/Teacher-free-Knowledge-Distillation) with only
the `.cuda()` calls removed and the parameters passed explicitly.

Run: python scripts/gen_core_fixtures.py   (needs torch and safetensors; the
Rust tests only read the committed output).
"""
import json
import math
import os
from bisect import bisect_right

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "core")
torch.manual_seed(20200614)
DT = torch.float64


# ---- official losses (my_loss_function.py), verbatim arithmetic ----------------
def loss_kd(outputs, labels, teacher_outputs, alpha, T):
    return nn.KLDivLoss()(F.log_softmax(outputs / T, dim=1),
                          F.softmax(teacher_outputs / T, dim=1)) * (alpha * T * T) + \
        F.cross_entropy(outputs, labels) * (1. - alpha)


def loss_kd_self(outputs, labels, teacher_outputs, alpha, T, multiplier):
    return nn.KLDivLoss()(F.log_softmax(outputs / T, dim=1),
                          F.softmax(teacher_outputs / T, dim=1)) * (alpha * T * T) * multiplier + \
        F.cross_entropy(outputs, labels) * (1. - alpha)


def loss_kd_regularization(outputs, labels, alpha, T, multiplier, correct_prob=0.99):
    K = outputs.size(1)
    loss_CE = F.cross_entropy(outputs, labels)
    teacher_soft = torch.ones_like(outputs)
    teacher_soft = teacher_soft * (1 - correct_prob) / (K - 1)
    for i in range(outputs.shape[0]):
        teacher_soft[i, labels[i]] = correct_prob
    loss_soft_regu = nn.KLDivLoss()(F.log_softmax(outputs, dim=1), F.softmax(teacher_soft / T, dim=1)) * multiplier
    return (1. - alpha) * loss_CE + alpha * loss_soft_regu


def loss_label_smoothing(outputs, labels, smoothing=0.1):
    N, C = outputs.size(0), outputs.size(1)
    smoothed_labels = torch.full(size=(N, C), fill_value=smoothing / (C - 1), dtype=outputs.dtype)
    smoothed_labels.scatter_(dim=1, index=torch.unsqueeze(labels, dim=1), value=1 - smoothing)
    log_prob = F.log_softmax(outputs, dim=1)
    return -torch.sum(log_prob * smoothed_labels) / N


# ---- named variants (not in the official code) ---------------------------------
def virtual_teacher(labels, K, a, dtype):
    pd = torch.full((labels.shape[0], K), (1 - a) / (K - 1), dtype=dtype)
    pd.scatter_(1, labels.unsqueeze(1), a)
    return pd


def reg_eq9(outputs, labels, alpha, T, multiplier, t_squared, a=0.99):
    pd = virtual_teacher(labels, outputs.size(1), a, outputs.dtype)
    kl = nn.KLDivLoss()(F.log_softmax(outputs / T, dim=1), F.softmax(pd / T, dim=1))
    return (1 - alpha) * F.cross_entropy(outputs, labels) + alpha * multiplier * (T * T if t_squared else 1) * kl


def kd_reduction(outputs, labels, teacher, alpha, T, multiplier, reduction):
    kl = F.kl_div(F.log_softmax(outputs / T, dim=1), F.softmax(teacher / T, dim=1), reduction=reduction)
    return (1 - alpha) * F.cross_entropy(outputs, labels) + alpha * T * T * multiplier * kl


def reg_reduction(outputs, labels, alpha, T, multiplier, a, reduction):
    pd = virtual_teacher(labels, outputs.size(1), a, outputs.dtype)
    kl = F.kl_div(F.log_softmax(outputs, dim=1), F.softmax(pd / T, dim=1), reduction=reduction)
    return (1 - alpha) * F.cross_entropy(outputs, labels) + alpha * multiplier * kl


def losses():
    tensors, cases, groups = {}, [], []

    def add(name, kind, params, fn):
        """One case on the current input group: the loss and its gradient w.r.t. the student."""
        g = len(groups) - 1
        student, labels, teacher, target = (groups[g][key] for key in ("student", "labels", "teacher", "target"))
        s64 = student.to(DT).clone().requires_grad_(True)
        loss = fn(s64, labels, teacher.to(DT), target.to(DT))
        loss.backward()
        i = len(cases)
        tensors[f"{i}.grad"] = s64.grad.float().contiguous()
        cases.append({"index": i, "group": g, "name": name, "kind": kind, "params": params, "loss": loss.item()})

    shapes = [(8, 10), (16, 100), (6, 200), (4, 1000)]
    for n, k in shapes:
        for scale, tag in [(3.0, "normal"), (1e4, "extreme")]:
            student = (torch.randn(n, k) * scale).float().to(DT)
            teacher = (torch.randn(n, k) * scale).float().to(DT)
            if tag == "extreme":  # saturate to +-1e4 exactly on some entries
                student = torch.where(torch.rand(n, k) < 0.3, torch.sign(student) * 1e4, student)
                teacher = torch.where(torch.rand(n, k) < 0.3, torch.sign(teacher) * 1e4, teacher)
            labels = torch.randint(0, k, (n,))
            base = f"N{n}K{k}-{tag}"
            # Plain KL with probability targets that contain exact zeros (xlogy convention).
            target = F.softmax(torch.randn(n, k) * 2.0, dim=1).to(DT)
            target[:, 0] = 0.0
            target = target / target.sum(1, keepdim=True)
            groups.append({"student": student.float(), "labels": labels, "teacher": teacher.float(),
                           "target": target.float()})
            for key, value in groups[-1].items():
                tensors[f"g{len(groups) - 1}.{key}"] = value.contiguous()
            add(f"ce-{base}", "cross_entropy", {},
                lambda s, y, t, q: F.cross_entropy(s, y))
            add(f"lsr-{base}", "label_smoothing", {"epsilon": 0.1, "form": "official"},
                lambda s, y, t, q: loss_label_smoothing(s, y))
            add(f"lsr-uniform-{base}", "label_smoothing", {"epsilon": 0.2, "form": "uniform"},
                lambda s, y, t, q: F.cross_entropy(s, y, label_smoothing=0.2))
            for alpha, T in [(0.95, 20.0), (0.6, 4.0), (0.9, 1.0), (0.1, 40.0)]:
                add(f"kd-a{alpha}-T{T}-{base}", "kd", {"alpha": alpha, "temperature": T},
                    lambda s, y, t, q, a=alpha, T=T: loss_kd(s, y, t, a, T))
            for alpha, T, m in [(0.9, 20.0, 100.0), (0.95, 6.0, 50.0), (0.4, 1.0, 1.0)]:
                add(f"self-a{alpha}-T{T}-m{m}-{base}", "kd_self",
                    {"alpha": alpha, "temperature": T, "multiplier": m},
                    lambda s, y, t, q, a=alpha, T=T, m=m: loss_kd_self(s, y, t, a, T, m))
            for alpha, T, m in [(0.1, 20.0, 100.0), (0.95, 40.0, 1.0), (0.5, 1.0, 50.0)]:
                add(f"reg-a{alpha}-T{T}-m{m}-{base}", "reg", {"alpha": alpha, "temperature": T, "multiplier": m,
                                                           "correct_prob": 0.99},
                    lambda s, y, t, q, a=alpha, T=T, m=m: loss_kd_regularization(s, y, a, T, m))
            add(f"reg-a0.9-T20-m1-cp0.9-{base}", "reg", {"alpha": 0.9, "temperature": 20.0, "multiplier": 1.0,
                                                        "correct_prob": 0.9},
                lambda s, y, t, q: loss_kd_regularization(s, y, 0.9, 20.0, 1.0, correct_prob=0.9))
            for t2 in (False, True):
                add(f"reg-eq9-t2{t2}-{base}", "reg_eq9", {"alpha": 0.5, "temperature": 20.0, "multiplier": 1.0,
                                                         "temperature_squared": t2},
                    lambda s, y, t, q, t2=t2: reg_eq9(s, y, 0.5, 20.0, 1.0, t2))
            for red in ("batchmean", "sum"):
                add(f"kd-{red}-{base}", "kd_self", {"alpha": 0.9, "temperature": 4.0, "multiplier": 1.0,
                                                    "reduction": red},
                    lambda s, y, t, q, r=red: kd_reduction(s, y, t, 0.9, 4.0, 1.0, r))
                add(f"reg-{red}-{base}", "reg", {"alpha": 0.1, "temperature": 20.0, "multiplier": 1.0,
                                                 "correct_prob": 0.99, "reduction": red},
                    lambda s, y, t, q, r=red: reg_reduction(s, y, 0.1, 20.0, 1.0, 0.99, r))
            for red in ("mean", "batchmean", "sum"):
                add(f"kl-{red}-{base}", "kl_div", {"reduction": red},
                    lambda s, y, t, q, r=red: F.kl_div(F.log_softmax(s, dim=1), q, reduction=r))
    save_file(tensors, os.path.join(ROOT, "losses.safetensors"))
    with open(os.path.join(ROOT, "losses.json"), "w") as f:
        json.dump({"generator": "scripts/gen_core_fixtures.py", "torch": torch.__version__,
                   "dtype": "float64 reference on float32 inputs", "cases": cases}, f, indent=1)


# ---- optimizers: a few steps of torch.optim on a least-squares problem -------
def optimizer_steps(opt, x, y, w, b, base_lr, steps, r, tensors):
    """Takes `steps` steps of `opt` on mean((x w^T + b - y)^2), changing the lr
    before each as a schedule would; records w and b after every step as
    `<r>.w<k>`, `<r>.b<k>`. Returns the learning rates."""
    lrs = []
    for step in range(steps):
        lr = base_lr * (1 - 0.1 * step)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        opt.zero_grad(set_to_none=True)
        loss = ((x.to(DT) @ w.T + b - y.to(DT)) ** 2).mean()
        loss.backward()
        opt.step()
        tensors[f"{r}.w{step + 1}"] = w.detach().float()
        tensors[f"{r}.b{step + 1}"] = b.detach().float()
    return lrs


def optimizer_fixture(stem, data, configs, make_opt, steps):
    """Runs `make_opt([w, b, frozen], cfg)` for every config from the same
    start (`frozen` is in the optimizer but never in the graph) and writes
    <stem>.safetensors + <stem>.json."""
    tensors = dict(data)
    runs = []
    for r, cfg in enumerate(configs):
        w = data["w0"].to(DT).clone().requires_grad_(True)
        b = data["b0"].to(DT).clone().requires_grad_(True)
        frozen = data["frozen0"].to(DT).clone().requires_grad_(True)
        opt = make_opt([w, b, frozen], cfg)
        lrs = optimizer_steps(opt, data["x"], data["y"], w, b, cfg["lr"], steps, r, tensors)
        assert torch.equal(frozen.detach().float(), data["frozen0"])
        runs.append({"index": r, "config": cfg, "lrs": lrs})
    save_file(tensors, os.path.join(ROOT, f"{stem}.safetensors"))
    with open(os.path.join(ROOT, f"{stem}.json"), "w") as f:
        json.dump({"generator": "scripts/gen_core_fixtures.py", "torch": torch.__version__,
                   "loss": "mean((x w^T + b - y)^2)", "runs": runs}, f, indent=1)


def problem(generator=None):
    """x, y, and the starting w, b and frozen parameter."""
    shapes = {"x": (8, 3), "y": (8, 4), "w0": (4, 3), "b0": (4,), "frozen0": (5,)}
    return {name: torch.randn(*shape, dtype=torch.float32, generator=generator) for name, shape in shapes.items()}


def sgd():
    configs = [
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 5e-4, "nesterov": False},
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "weight_decay": 1e-3, "nesterov": True},
        {"lr": 0.2, "momentum": 0.5, "dampening": 0.1, "weight_decay": 0.0, "nesterov": False},
        {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 5e-4, "nesterov": False},
    ]
    optimizer_fixture("sgd", problem(), configs, lambda params, cfg: torch.optim.SGD(params, **cfg), 5)


def adam():
    configs = [
        {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},  # the official CNN's
        {"lr": 0.05, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 5e-4},
        {"lr": 0.01, "beta1": 0.0, "beta2": 0.9, "eps": 1e-3, "weight_decay": 1e-2},
    ]

    def make(params, cfg):
        return torch.optim.Adam(params, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
                                weight_decay=cfg["weight_decay"], foreach=False)

    # Its own generator: adding it left the other fixtures unchanged.
    optimizer_fixture("adam", problem(torch.Generator().manual_seed(20201216)), configs, make, 6)


# ---- schedules: the official training loop's calls, recorded -----------------
class WarmUpLR(torch.optim.lr_scheduler.LRScheduler):
    """The official code's warm-up (utils.py): lr = base * last_epoch / (total_iters + 1e-8)."""

    def __init__(self, optimizer, total_iters, last_epoch=-1):
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base_lr * self.last_epoch / (self.total_iters + 1e-8) for base_lr in self.base_lrs]


def official_loop(base_lr, iters, warm, milestones, gamma, epochs):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)
    warmup = WarmUpLR(opt, iters * warm)
    out = []
    for epoch in range(epochs):
        if epoch > 0:
            sched.step(epoch)  # closed form, as PyTorch 1.2's MultiStepLR.get_lr computed it
        for i in range(iters):
            if epoch < warm:
                warmup.step()
            out.append([epoch, i, opt.param_groups[0]["lr"]])
    return out


def cosine_loop(base_lr, epochs, eta_min, iters):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=eta_min)
    out = []
    for epoch in range(epochs):
        if epoch > 0:
            sched.step(epoch)
        for i in range(iters):
            out.append([epoch, i, opt.param_groups[0]["lr"]])
    return out


def schedules():
    import warnings
    warnings.filterwarnings("ignore")  # step(epoch) is deprecated; the official code uses it
    runs = [
        {"name": "official bs128", "base_lr": 0.1, "iters_per_epoch": 3, "warmup_epochs": 1,
         "decay": {"kind": "multi_step", "milestones": [60, 120, 160], "gamma": 0.2},
         "lrs": official_loop(0.1, 3, 1, [60, 120, 160], 0.2, 200)},
        {"name": "official bs64 (lr 0.1*64/128)", "base_lr": 0.05, "iters_per_epoch": 782, "warmup_epochs": 1,
         "decay": {"kind": "multi_step", "milestones": [60, 120, 160], "gamma": 0.2},
         "lrs": [r for r in official_loop(0.05, 782, 1, [60, 120, 160], 0.2, 62) if r[1] in (0, 1, 390, 781)]},
        {"name": "warm-up 2 epochs, /10 at 30,60,80", "base_lr": 0.2, "iters_per_epoch": 4, "warmup_epochs": 2,
         "decay": {"kind": "multi_step", "milestones": [30, 60, 80], "gamma": 0.1},
         "lrs": official_loop(0.2, 4, 2, [30, 60, 80], 0.1, 90)},
        {"name": "cosine", "base_lr": 0.1, "iters_per_epoch": 2, "warmup_epochs": 0,
         "decay": {"kind": "cosine", "epochs": 50, "min_lr": 0.001},
         "lrs": cosine_loop(0.1, 50, 0.001, 2)},
    ]
    with open(os.path.join(ROOT, "schedules.json"), "w") as f:
        json.dump({"generator": "scripts/gen_core_fixtures.py", "torch": torch.__version__, "runs": runs}, f)


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    # TFKD_FIXTURES_ONLY=adam regenerates the Adam files alone; the others
    # draw from one seeded stream, in this order, so they are made together.
    only = os.environ.get("TFKD_FIXTURES_ONLY")
    for name, make in [("losses", losses), ("sgd", sgd), ("schedules", schedules), ("adam", adam)]:
        if only is None or only == name:
            make()
    print("wrote", sorted(os.listdir(ROOT)))
