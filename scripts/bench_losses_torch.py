#!/usr/bin/env python3
"""Times the paper's losses in PyTorch (CPU) and compares them with tfkd's
criterion results.

The losses are the official repository's (`my_loss_function.py`) with the
hyper-parameters of `benches/src/lib.rs`:

* cross_entropy    F.cross_entropy
* label_smoothing  loss_label_smoothing (eps = 0.1, eps/(K-1) off the true class)
* kd               loss_kd (alpha = 0.95, T = 20)
* tfkd_self        loss_kd_self (alpha = 0.9, T = 20, multiplier = 100)
* tfkd_reg         loss_kd_regularization (alpha = 0.1, T = 20, multiplier = 100,
                   correct_prob = 0.99); the virtual teacher is built with one
                   scatter_ instead of the official per-sample Python loop,
                   which would only make PyTorch slower

each forward ("fwd") and forward+backward ("fwd_bwd", the student's gradient),
at (N, K) = (128, 100), (128, 200), (1024, 1000), float32, on
`torch.set_num_threads(2)` threads (override with --threads). Each timing is the
median of many repetitions of one call, after a warm-up.

Usage:
    python scripts/bench_losses_torch.py                      # PyTorch table
    python scripts/bench_losses_torch.py --criterion TARGET   # + tfkd and ratios
    python scripts/bench_losses_torch.py --criterion TARGET --markdown
    python scripts/bench_losses_torch.py --runs 3 --criterion RUN1 RUN2 RUN3

TARGET is cargo's target directory after `cargo bench -p tfkd-benches`
(criterion writes TARGET/criterion/<loss>_<mode>/<path>/<N>x<K>/new/).

On a machine shared with other jobs, a burst of load inflates whole runs (and
PyTorch's two OpenMP threads stall at their barriers). `--runs R` repeats the
PyTorch sweep R times, and several criterion directories (copies of
TARGET/criterion from repeated `cargo bench` runs, each given as the directory
holding `criterion/`) may be given: each cell then reports the lowest of the
per-run medians.
"""

import argparse
import json
import os
import statistics
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = [(128, 100), (128, 200), (1024, 1000)]
LOSSES = ["cross_entropy", "label_smoothing", "kd", "tfkd_self", "tfkd_reg"]
MODES = ["fwd", "fwd_bwd"]


def loss_label_smoothing(outputs, labels):
    alpha = 0.1
    n, c = outputs.shape
    smoothed = torch.full((n, c), alpha / (c - 1), dtype=outputs.dtype)
    smoothed.scatter_(1, labels.unsqueeze(1), 1 - alpha)
    log_prob = F.log_softmax(outputs, dim=1)
    return -torch.sum(log_prob * smoothed) / n


def loss_kd_self(outputs, labels, teacher_outputs, alpha, temperature, multiplier):
    t = temperature
    loss_ce = F.cross_entropy(outputs, labels)
    d_kl = nn.KLDivLoss()(F.log_softmax(outputs / t, dim=1), F.softmax(teacher_outputs / t, dim=1)) * (t * t) * multiplier
    return (1.0 - alpha) * loss_ce + alpha * d_kl


def loss_kd_regularization(outputs, labels, alpha, temperature, multiplier, correct_prob=0.99):
    loss_ce = F.cross_entropy(outputs, labels)
    k = outputs.size(1)
    teacher_soft = torch.full_like(outputs, (1 - correct_prob) / (k - 1))
    teacher_soft.scatter_(1, labels.unsqueeze(1), correct_prob)
    soft = nn.KLDivLoss()(F.log_softmax(outputs, dim=1), F.softmax(teacher_soft / temperature, dim=1)) * multiplier
    return (1.0 - alpha) * loss_ce + alpha * soft


def make_loss(name):
    if name == "cross_entropy":
        return lambda s, t, y: F.cross_entropy(s, y)
    if name == "label_smoothing":
        return lambda s, t, y: loss_label_smoothing(s, y)
    if name == "kd":
        return lambda s, t, y: loss_kd_self(s, y, t, 0.95, 20.0, 1.0)
    if name == "tfkd_self":
        return lambda s, t, y: loss_kd_self(s, y, t, 0.9, 20.0, 100.0)
    if name == "tfkd_reg":
        return lambda s, t, y: loss_kd_regularization(s, y, 0.1, 20.0, 100.0)
    raise ValueError(name)


def time_one(fn, min_reps, min_seconds):
    """Median seconds of one call of fn, after a warm-up."""
    for _ in range(10):
        fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), min(samples), len(samples)


def bench_torch(min_reps, min_seconds, losses=LOSSES, shapes=SHAPES, modes=MODES):
    """{(loss, mode, n, k): median ms}."""
    results = {}
    gen = torch.Generator().manual_seed(2020)
    for n, k in shapes:
        student = (torch.randn(n, k, generator=gen) * 2.0).requires_grad_(True)
        teacher = torch.randn(n, k, generator=gen) * 4.0
        labels = torch.randint(0, k, (n,), generator=gen)
        for name in losses:
            loss = make_loss(name)
            for mode in modes:
                if mode == "fwd":
                    def call():
                        return loss(student, teacher, labels)
                else:
                    def call():
                        loss(student, teacher, labels).backward()
                        student.grad = None
                median, fastest, reps = time_one(call, min_reps, min_seconds)
                results[(name, mode, n, k)] = median * 1e3
                print(
                    f"  torch {name:16s} {mode:8s} {n:5d}x{k:<5d} median {median * 1e3:9.4f} ms"
                    f"  min {fastest * 1e3:9.4f} ms  ({reps} reps)",
                    flush=True,
                )
    return results


def read_criterion(targets):
    """{(loss, mode, path, n, k): median ms} from criterion's estimates (the
    lowest over the given target directories)."""
    results = {}
    for target in targets:
        for key, ms in read_criterion_one(target).items():
            results[key] = min(ms, results.get(key, ms))
    return results


def read_criterion_one(target):
    results = {}
    root = os.path.join(target, "criterion")
    for loss in LOSSES:
        for mode in MODES:
            for path in ["fused", "composed"]:
                for n, k in SHAPES:
                    est = os.path.join(root, f"{loss}_{mode}", path, f"{n}x{k}", "new", "estimates.json")
                    if os.path.exists(est):
                        with open(est) as f:
                            data = json.load(f)
                        results[(loss, mode, path, n, k)] = data["median"]["point_estimate"] / 1e6
    return results


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def print_tables(torch_ms, tfkd_ms, markdown):
    for n, k in SHAPES:
        print()
        print(f"(N, K) = ({n}, {k})" if not markdown else f"#### (N, K) = ({n}, {k})\n")
        header = ["loss", "pass", "PyTorch ms", "tfkd composed ms", "tfkd fused ms", "PyTorch / fused", "composed / fused"]
        rows = []
        for loss in LOSSES:
            for mode in MODES:
                t = torch_ms.get((loss, mode, n, k))
                c = tfkd_ms.get((loss, mode, "composed", n, k))
                f = tfkd_ms.get((loss, mode, "fused", n, k))
                speed = None if t is None or f is None else t / f
                gain = None if c is None or f is None else c / f
                rows.append([loss, mode.replace("fwd_bwd", "fwd+bwd"), fmt(t), fmt(c), fmt(f), fmt(speed, 2) + ("×" if speed else ""), fmt(gain, 1) + ("×" if gain else "")])
        if markdown:
            print("| " + " | ".join(header) + " |")
            print("|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|")
            for r in rows:
                print("| " + " | ".join(r) + " |")
        else:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
            print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--min-reps", type=int, default=200, help="minimum repetitions per case")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="minimum seconds per case")
    parser.add_argument("--criterion", metavar="TARGET", nargs="+", help="cargo target dir(s) holding criterion/ results")
    parser.add_argument("--runs", type=int, default=1, help="PyTorch sweeps; each cell reports the lowest median")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated subset of " + ",".join(LOSSES))
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="comma-separated NxK subset")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of fwd,fwd_bwd")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU", flush=True)
    torch_ms = {}
    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", flush=True)
        losses = [x for x in args.losses.split(",") if x]
        shapes = [tuple(int(v) for v in x.split("x")) for x in args.shapes.split(",") if x]
        modes = [x for x in args.modes.split(",") if x]
        for key, ms in bench_torch(args.min_reps, args.min_seconds, losses, shapes, modes).items():
            torch_ms[key] = min(ms, torch_ms.get(key, ms))
    tfkd_ms = read_criterion(args.criterion) if args.criterion else {}
    if args.criterion and not tfkd_ms:
        print(f"no criterion results under {args.criterion} (run `cargo bench -p tfkd-benches` first)")
    print_tables(torch_ms, tfkd_ms, args.markdown)


if __name__ == "__main__":
    main()
