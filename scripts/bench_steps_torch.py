#!/usr/bin/env python3
"""Times a whole PyTorch training step on the zoo's architectures and compares
it with `tfkd bench-step`.

The step is the one `tfkd bench-step` times: forward in training mode,
F.cross_entropy, backward, torch.optim.SGD (momentum 0.9, weight decay 5e-4),
and `loss.item()` (which waits for the device), on random N(0, 1) images.
The architectures are the PyTorch references of `scripts/gen_zoo_fixtures.py`
(the original repository's model code), so both sides train the same network.

Usage:
    python scripts/bench_steps_torch.py [--models cnn,resnet18] [--batch 128]
        [--device cpu|cuda] [--threads 2] [--steps 5] [--warmup 2]
        [--json torch.jsonl] [--compare tfkd.jsonl] [--markdown] [--shapes]
    python scripts/bench_steps_torch.py --rounds DIR [--markdown]

`--compare FILE` reads the JSON lines written by `tfkd bench-step --json FILE`
and prints the ratio table (tfkd's images/s over PyTorch's: above 1 means tfkd
is faster). On CPU the peak memory is the process's maximum resident set
(`ru_maxrss`, run one model per process for a clean figure); on CUDA it is
`torch.cuda.max_memory_allocated` (tfkd: its memory pool's high-water mark of
bytes in use), and `max_memory_reserved` (tfkd: of bytes held) is shown
beside it. Graph MB is the activation memory the step's graph keeps for
the backward pass (the distinct buffers autograd saves, parameters and the
input excluded; tfkd: `tfkd_core::graph::kept_by_graph`): the same count
on every device, so the CPU shows what either framework keeps on a GPU.

`--rounds DIR` reads the interleaved rounds that `scripts/bench_cpu_ratio.sh`
writes (DIR/torch*.jsonl, DIR/tfkd*.jsonl: one file per round) and prints
each cell as the median of the rounds' medians, so that a shared machine's
drift between rounds hits both frameworks alike.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_zoo_fixtures import FULL, IMAGENET  # noqa: E402


def build(name, classes, side):
    """The PyTorch reference of a registry name: a CIFAR network (FULL) or
    an ImageNet one (IMAGENET, torchvision's code; run them with --side 224)."""
    if name in IMAGENET:
        return IMAGENET[name][0](classes)
    return FULL[name](classes, side)


def autograd_nodes(loss):
    """The autograd nodes behind `loss`, the parameters' AccumulateGrad
    excluded: the ops of a step's forward pass and loss (`tfkd bench-step`
    records its graph's nodes as graph_nodes), a proxy for its launches."""
    seen, todo = set(), [loss.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(next_fn for next_fn, _ in fn.next_functions)
    return sum(1 for fn in seen if type(fn).__name__ != "AccumulateGrad")


def saved_mb(model, images, labels, shapes=None):
    """MiB of the distinct buffers autograd saves for the backward pass of one
    forward + loss, parameters, buffers and the input batch excluded: what
    `tfkd bench-step` reports as graph MB (tfkd_core::graph::kept_by_graph),
    the activation memory of a step, the same on every device; and the
    graph's nodes (`autograd_nodes`).

    With `shapes` (a model name), also prints the saved buffers by shape,
    largest total first, as `tfkd -v bench-step` logs its own: the two lists
    side by side say which tensor one framework keeps and the other not."""
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers()) + [images]}
    sizes = {}
    described = {}

    def pack(t):
        # Every dtype: max pooling's int64 indices and dropout's masks are
        # memory too (tfkd keeps no integer tensor bigger than the labels).
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in own and storage.nbytes() > 0:
            sizes[ptr] = max(sizes.get(ptr, 0), storage.nbytes())
            if t.numel() * t.element_size() == storage.nbytes():
                described[ptr] = (tuple(t.shape), str(t.dtype).replace("torch.", ""))
            else:
                described.setdefault(ptr, (("storage",), str(t.dtype).replace("torch.", "")))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(images), labels)
    nodes = autograd_nodes(loss)
    if shapes:
        print("%s: autograd has %d nodes" % (shapes, nodes))
    del loss
    if shapes:
        by_shape = {}
        for ptr, nbytes in sizes.items():
            key = described.get(ptr, (("storage",), "?"))
            count, total = by_shape.get(key, (0, 0))
            by_shape[key] = (count + 1, total + nbytes)
        for (dims, dtype), (count, total) in sorted(by_shape.items(), key=lambda kv: -kv[1][1]):
            print("%s: autograd keeps %d x %s %s (%.1f MiB)" % (shapes, count, list(dims), dtype, total / 2**20))
    return sum(sizes.values()) / 2**20, nodes


def time_model(name, args, device):
    torch.manual_seed(0)
    model = build(name, args.classes, args.side).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(args.batch, 3, args.side, args.side, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    graph, nodes = saved_mb(model, images, labels, shapes=name if args.shapes else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        value = loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert value == value, "%s: NaN loss" % name
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step()
    times = sorted(step() for _ in range(args.steps))
    median = statistics.median(times)
    reserved = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        reserved = torch.cuda.max_memory_reserved() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "framework": "torch",
        "model": name,
        "device": args.device,
        "batch": args.batch,
        "classes": args.classes,
        "side": args.side,
        "threads": torch.get_num_threads(),
        "median_s": median,
        "min_s": times[0],
        "images_per_s": args.batch / median,
        "peak_mb": peak,
        "peak_reserved_mb": reserved,
        "graph_mb": graph,
        "graph_nodes": nodes,
        "torch": torch.__version__,
    }


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def compare(torch_rows, tfkd_rows, markdown):
    key = lambda r: (r["model"], r["batch"], r["device"].split(":")[0])
    # PyTorch builds the full-width networks only.
    ours = {key(r): r for r in tfkd_rows if r.get("width_divisor", 1) == 1}
    head = ["model", "batch", "device", "PyTorch img/s", "tfkd img/s", "tfkd / PyTorch", "PyTorch peak MB", "tfkd peak MB"]
    # On CUDA, peak MB is memory in use by tensors (PyTorch's
    # max_memory_allocated, the memory pool's high-water mark for tfkd); the
    # memory held by the allocators (max_memory_reserved) gets columns too.
    reserved = any(r.get("peak_reserved_mb") is not None for r in torch_rows)
    if reserved:
        head += ["PyTorch reserved MB", "tfkd reserved MB"]
    # What each graph keeps for the backward pass (device-independent).
    graph = any(r.get("graph_mb") is not None for r in torch_rows)
    if graph:
        head += ["PyTorch graph MB", "tfkd graph MB"]
    fmt = lambda v: "-" if v is None else "%.0f" % v
    rows = []
    for r in torch_rows:
        t = ours.get(key(r))
        if t is None:
            continue
        tp = t.get("peak_rss_mb") or t.get("peak_mb")
        row = [r["model"], str(r["batch"]), r["device"], "%.1f" % r["images_per_s"], "%.1f" % t["images_per_s"],
               "%.2f" % (t["images_per_s"] / r["images_per_s"]), fmt(r["peak_mb"]), fmt(tp)]
        if reserved:
            row += [fmt(r.get("peak_reserved_mb")), fmt(t.get("peak_reserved_mb"))]
        if graph:
            row += [fmt(r.get("graph_mb")), fmt(t.get("graph_mb"))]
        rows.append(row)
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        print(("{:<14}" + "{:>16}" * (len(head) - 1)).format(*head))
        for row in rows:
            print(("{:<14}" + "{:>16}" * (len(head) - 1)).format(*row))


def rust_rows(torch_rows, tfkd_rows, measured_on):
    """The rows of `CUDA_MEASURED` (crates/tfkd-zoo/src/registry.rs) for
    these results: full width, batch 128, images/s of both side by side."""
    ours = {r["model"]: r for r in tfkd_rows if r.get("width_divisor", 1) == 1 and r["batch"] == 128}
    print("// measured_on: %s" % measured_on)
    for r in torch_rows:
        t = ours.get(r["model"])
        if t is None or r["batch"] != 128:
            continue
        print('    CudaThroughput { model: "%s", tfkd_images_per_second: %.1f, pytorch_images_per_second: %.1f, measured_on: MEASURED_ON },'
              % (r["model"], t["images_per_s"], r["images_per_s"]))


def median_of_rounds(files):
    """One row per model: the median over rounds of images/s and of peak MB."""
    by_model = {}
    for path in files:
        for r in load(path):
            by_model.setdefault(r["model"], []).append(r)
    rows = []
    for model, rs in by_model.items():
        row = dict(rs[0])
        row["images_per_s"] = statistics.median(r["images_per_s"] for r in rs)
        peaks = [r.get("peak_rss_mb") or r.get("peak_mb") for r in rs]
        row["peak_mb"] = row["peak_rss_mb"] = statistics.median(peaks)
        row["rounds"] = len(rs)
        rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cnn,resnet18,mobilenet_v2,shufflenet_v2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", help="append one JSON line per model")
    p.add_argument("--compare", help="tfkd bench-step JSON lines to compare with")
    p.add_argument("--torch-json", help="compare this file of earlier PyTorch results instead of timing")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--shapes", action="store_true", help="print what autograd keeps, by shape (tfkd: `tfkd -v bench-step`)")
    p.add_argument("--rounds", help="folder of interleaved rounds (torch*.jsonl, tfkd*.jsonl) to summarise")
    p.add_argument("--rust", metavar="MEASURED_ON", help="with --torch-json and --compare: print the CUDA_MEASURED rows of the zoo's registry instead of the table (MEASURED_ON: the GPU and date)")
    args = p.parse_args()
    if args.rounds:
        import glob
        torch_files = sorted(glob.glob(os.path.join(args.rounds, "torch*.jsonl")))
        tfkd_files = sorted(glob.glob(os.path.join(args.rounds, "tfkd*.jsonl")))
        if not torch_files or not tfkd_files:
            sys.exit("%s: want torch*.jsonl and tfkd*.jsonl (one per round)" % args.rounds)
        print("rounds: %d PyTorch, %d tfkd; each cell is the median of the rounds" % (len(torch_files), len(tfkd_files)))
        compare(median_of_rounds(torch_files), median_of_rounds(tfkd_files), args.markdown)
        return
    if args.torch_json:
        if args.rust:
            rust_rows(load(args.torch_json), load(args.compare), args.rust)
        else:
            compare(load(args.torch_json), load(args.compare), args.markdown)
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.models.split(","):
        if name not in FULL and name not in IMAGENET:
            sys.exit("unknown model %r; one of %s" % (name, ", ".join(list(FULL) + list(IMAGENET))))
        row = time_model(name, args, device)
        rows.append(row)
        print("%-16s batch %4d  %.4f s/step  %8.1f img/s  peak %.0f MB  graph %.0f MB" % (name, args.batch, row["median_s"], row["images_per_s"], row["peak_mb"], row["graph_mb"]), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    if args.compare:
        compare(rows, load(args.compare), args.markdown)


if __name__ == "__main__":
    main()
