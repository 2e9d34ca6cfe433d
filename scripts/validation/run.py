#!/usr/bin/env python3
"""Side-by-side validation of whole training runs: tfkd versus PyTorch.

For every (network, dataset, method, seed) of the matrix below, runs
`tfkd train` and scripts/validation/torch_train.py with the same recipe
(official CIFAR recipe, docs/PAPER.md §3.1, epochs and milestones scaled),
then writes, from whatever has finished:

  docs/validation/results.json   every run: best / last top-1, curves, params
  docs/validation/<cell>.png     test top-1 curves, tfkd solid, PyTorch dashed
  docs/VALIDATION.md             the generated part (between the markers):
                                 setup, tables, agreement verdicts

Results are collected after every finished run, so an interrupted sweep still
yields a partial report; rerunning skips the runs that finished (their run
folders live under --work, outside the repository).

This is a script a user reruns, not a test. Usage:

  TFKD_DATA_DIR=... PYTHON=python3 scripts/validation/run.py --tfkd path/to/tfkd
  scripts/validation/run.py --report-only      # regenerate the doc from --work
"""
import argparse
import concurrent.futures as cf
import datetime
import json
import math
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DOC = os.path.join(REPO, "docs", "VALIDATION.md")
FIG_DIR = os.path.join(REPO, "docs", "validation")
BEGIN, END = "<!-- BEGIN GENERATED (scripts/validation/run.py) -->", "<!-- END GENERATED -->"

# The matrix. Width divisors and epochs are sized for a 2-core CPU (see
# docs/VALIDATION.md): one epoch of each side was measured first.
CELLS = [
    dict(key="resnet18-cifar10-mini", model="resnet18", dataset="cifar10-mini", width_divisor=8, epochs=8),
    dict(key="mobilenet_v2-cifar10-mini", model="mobilenet_v2", dataset="cifar10-mini", width_divisor=16, epochs=5),
    dict(key="resnet18-tiny-imagenet-10", model="resnet18", dataset="tiny-imagenet-10", width_divisor=16, epochs=5),
]
METHODS = ["baseline", "lsr", "tf-kd-reg"]
SEEDS = [0, 1, 2]
SIDES = ["tfkd", "torch"]
# Official recipe (docs/PAPER.md §3.1) and the shipped base_resnet18 Tf-KD_reg values (§3.3).
RECIPE = dict(batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, warmup_epochs=1, gamma=0.2,
              paper_epochs=200, paper_milestones=[60, 120, 160])
LSR = dict(epsilon=0.1)
REG = dict(alpha=0.1, temperature=20.0, multiplier=100.0, correct_prob=0.99)


def milestones(epochs):
    """xtask's Profile::scale_epoch: round(m * E / 200), clamped to [1, E]."""
    if epochs == RECIPE["paper_epochs"]:
        return list(RECIPE["paper_milestones"])
    # f64::round rounds halves away from zero; Python's round() to even.
    return [min(max(math.floor(m * epochs / RECIPE["paper_epochs"] + 0.5), 1), epochs) for m in RECIPE["paper_milestones"]]


# tfkd's config spelling of a dataset where it differs from the folder name
# (none since the spelling fix of 2026-12-05; a tfkd binary older than that
# needs TFKD_TINY10_SPELLING=tiny-imagenet10).
TFKD_DATASET = {"tiny-imagenet-10": os.environ.get("TFKD_TINY10_SPELLING", "tiny-imagenet-10")}


def tfkd_config(cell, method, seed, out_dir, data_dir):
    ms = milestones(cell["epochs"])
    lines = [
        f"name = {json.dumps(f'{method}-s{seed}')}",
        f"epochs = {cell['epochs']}",
        f"out_dir = {json.dumps(out_dir)}",
        f"seed = {seed}",
        'device = "cpu"',
        "[model]",
        f"name = {json.dumps(cell['model'])}",
        f"width_divisor = {cell['width_divisor']}",
        "[data]",
        f"dataset = {json.dumps(TFKD_DATASET.get(cell['dataset'], cell['dataset']))}",
        f"root = {json.dumps(os.path.join(data_dir, cell['dataset']))}",
        "threads = 1",
        "[optim]",
        f"batch_size = {RECIPE['batch_size']}",
        f"lr = {RECIPE['lr']}",
        f"momentum = {RECIPE['momentum']}",
        f"weight_decay = {RECIPE['weight_decay']}",
        "[schedule]",
        f"warmup_epochs = {RECIPE['warmup_epochs']}",
        f"decay = {{ kind = \"multi_step\", milestones = {ms}, gamma = {RECIPE['gamma']} }}",
        "[strategy]",
        f"method = {json.dumps(method)}",
    ]
    if method == "lsr":
        lines += [f"epsilon = {LSR['epsilon']}", 'form = "official"']
    if method == "tf-kd-reg":
        lines += [f"alpha = {REG['alpha']}", f"temperature = {REG['temperature']}",
                  f"multiplier = {REG['multiplier']}", f"correct_prob = {REG['correct_prob']}", 'form = "as_coded"']
    return "\n".join(lines) + "\n"


def run_dir(work, side, cell, method, seed):
    if side == "tfkd":
        return os.path.join(work, "tfkd", cell["key"], f"{method}-s{seed}")
    return os.path.join(work, "torch", cell["key"], f"{method}-s{seed}")


def finished(work, side, cell, method, seed):
    d = run_dir(work, side, cell, method, seed)
    try:
        if side == "tfkd":
            with open(os.path.join(d, "summary.json")) as f:
                json.load(f)
            return True
        with open(os.path.join(d, "metrics.json")) as f:
            return bool(json.load(f).get("finished"))
    except (OSError, ValueError):
        return False


def command(args, side, cell, method, seed):
    if side == "tfkd":
        cfg_dir = os.path.join(args.work, "configs")
        os.makedirs(cfg_dir, exist_ok=True)
        cfg = os.path.join(cfg_dir, f"{cell['key']}-{method}-s{seed}.toml")
        with open(cfg, "w") as f:
            f.write(tfkd_config(cell, method, seed, os.path.join(args.work, "tfkd", cell["key"]), args.data_dir))
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        return [args.tfkd, "train", "-c", cfg, "-q", "--auto-resume"], env
    cmd = [args.python, os.path.join(HERE, "torch_train.py"), "--data-dir", args.data_dir,
           "--dataset", cell["dataset"], "--model", cell["model"], "--width-divisor", str(cell["width_divisor"]),
           "--method", method, "--epochs", str(cell["epochs"]),
           "--milestones", ",".join(map(str, milestones(cell["epochs"]))), "--gamma", str(RECIPE["gamma"]),
           "--warmup-epochs", str(RECIPE["warmup_epochs"]), "--batch-size", str(RECIPE["batch_size"]),
           "--lr", str(RECIPE["lr"]), "--momentum", str(RECIPE["momentum"]), "--weight-decay", str(RECIPE["weight_decay"]),
           "--epsilon", str(LSR["epsilon"]), "--alpha", str(REG["alpha"]), "--temperature", str(REG["temperature"]),
           "--multiplier", str(REG["multiplier"]), "--seed", str(seed), "--threads", str(args.threads),
           "--out", run_dir(args.work, "torch", cell, method, seed)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    return cmd, env


# ---------------------------------------------------------------------------
# collection
# ---------------------------------------------------------------------------


def safetensors_param_count(path):
    """Trainable parameters in a tfkd checkpoint (running statistics excluded) and its shapes."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    count = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
    return count, shapes


def load_run(work, side, cell, method, seed):
    d = run_dir(work, side, cell, method, seed)
    try:
        if side == "tfkd":
            with open(os.path.join(d, "metrics.jsonl")) as f:
                epochs = [json.loads(line) for line in f if line.strip()]
            done = finished(work, side, cell, method, seed)
            params, shapes = None, None
            ck = os.path.join(d, "best.safetensors")
            if os.path.exists(ck):
                params, shapes = safetensors_param_count(ck)
        else:
            with open(os.path.join(d, "metrics.json")) as f:
                m = json.load(f)
            epochs, done = m["epochs"], bool(m.get("finished"))
            params, shapes = m["config"]["params"], m["config"]["state_shapes"]
    except (OSError, ValueError, KeyError):
        return None
    if not epochs:
        return None
    curve = [e["test_top1"] for e in epochs]
    return dict(side=side, cell=cell["key"], method=method, seed=seed, finished=done,
                epochs=len(curve), best=max(curve), last=curve[-1], test_top1=curve,
                lr=[e["lr"] for e in epochs], train_loss=[e["train_loss"] for e in epochs],
                test_loss=[e["test_loss"] for e in epochs],
                seconds=sum(e.get("seconds", 0.0) for e in epochs), params=params, shapes=shapes)


def mean_std(xs):
    if not xs:
        return None, None
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def fmt(ms, digits=2):
    m, s = ms
    if m is None:
        return "–"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def verdict(a, b):
    """Agreement: |mean_tfkd − mean_torch| ≤ 2·sqrt(s_tfkd²/n_tfkd + s_torch²/n_torch)
    (two standard errors of the difference of the means)."""
    if len(a) < 2 or len(b) < 2:
        return None, None, "too few seeds"
    d = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    ok = abs(d) <= 2 * se
    return d, se, "agrees" if ok else "**DISAGREES**"


def system_info(args):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        torch_v = subprocess.run([args.python, "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)"],
                                 capture_output=True, text=True, timeout=120).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        torch_v = "unknown"
    try:
        commit = "commit " + subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch_v, python=platform.python_version(), commit=commit)


def plot(results, cell):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"baseline": "tab:blue", "lsr": "tab:orange", "tf-kd-reg": "tab:green"}
    styles = {"tfkd": "-", "torch": "--"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    any_line = False
    for method in METHODS:
        for side in SIDES:
            runs = [r for r in results if r["cell"] == cell["key"] and r["method"] == method and r["side"] == side]
            for r in runs:
                ax.plot(range(1, r["epochs"] + 1), r["test_top1"], styles[side], color=colors[method], lw=0.6, alpha=0.45)
            full = [r["test_top1"] for r in runs if r["epochs"] == cell["epochs"]]
            if full:
                mean = [statistics.mean(v) for v in zip(*full)]
                label = f"{method} ({'tfkd' if side == 'tfkd' else 'PyTorch'}, n={len(full)})"
                ax.plot(range(1, cell["epochs"] + 1), mean, styles[side], color=colors[method], lw=2.0, label=label)
                any_line = True
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{cell['model']} /{cell['width_divisor']} on {cell['dataset']}: tfkd (solid) vs PyTorch (dashed)")
    ax.grid(alpha=0.3)
    if any_line:
        ax.legend(fontsize=7, ncol=2)
    os.makedirs(FIG_DIR, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(FIG_DIR, f"{cell['key']}.png"), dpi=110)
    plt.close(fig)


def report(args, info, status):
    results = []
    for cell in CELLS:
        for method in METHODS:
            for seed in SEEDS:
                for side in SIDES:
                    r = load_run(args.work, side, cell, method, seed)
                    if r:
                        results.append(r)
    os.makedirs(FIG_DIR, exist_ok=True)
    slim = [{k: v for k, v in r.items() if k != "shapes"} for r in results]
    with open(os.path.join(FIG_DIR, "results.json"), "w") as f:
        json.dump(dict(info=info, cells=CELLS, recipe=RECIPE, lsr=LSR, reg=REG, runs=slim), f, indent=1)
    out = [BEGIN, "", f"_Generated by `scripts/validation/run.py` on {info['date']}; {status}._", ""]
    out += ["### What was run", "",
            f"- Machine: {info['cpu']} ({info['cores']} cores), {info['jobs']} runs at a time, "
            f"{info['threads']} compute thread per run (tfkd: `RAYON_NUM_THREADS={info['threads']}`, `data.threads = 1`; "
            f"PyTorch: `torch.set_num_threads({info['threads']})`, loader without workers).",
            f"- PyTorch / torchvision: {info['torch']} (CPU), Python {info['python']}; tfkd: {info['commit']}.",
            f"- Recipe (both sides): SGD momentum {RECIPE['momentum']}, weight decay {RECIPE['weight_decay']}, batch {RECIPE['batch_size']}, "
            f"lr {RECIPE['lr']}·{RECIPE['batch_size']}/128, {RECIPE['warmup_epochs']} warm-up epoch (per-iteration linear), "
            f"MultiStep ×{RECIPE['gamma']} at the official milestones 60/120/160 scaled to the run length "
            f"(round(m·E/200)), drop_last false, official augmentation; LSR ε = {LSR['epsilon']} (official form, ε/(K−1)); "
            f"Tf-KD_reg as coded: α = {REG['alpha']}, T = {REG['temperature']:g}, m = {REG['multiplier']:g}, a = {REG['correct_prob']} "
            "(elementwise-mean KLDivLoss), the shipped `base_resnet18` values, used for every network.",
            "", "| network | dataset | width divisor | params tfkd | params PyTorch | state-dict shapes | epochs | milestones |",
            "|---|---|---|---|---|---|---|---|"]
    for cell in CELLS:
        pt = [r for r in results if r["cell"] == cell["key"] and r["side"] == "tfkd" and r["params"]]
        pp = [r for r in results if r["cell"] == cell["key"] and r["side"] == "torch" and r["params"]]
        ptf = pt[0]["params"] if pt else "–"
        ptc = pp[0]["params"] if pp else "–"
        if pt and pp:
            same = "identical" if pt[0]["shapes"] == pp[0]["shapes"] else "**differ**"
        else:
            same = "–"
        out.append(f"| {cell['model']} | {cell['dataset']} | {cell['width_divisor']} | {ptf} | {ptc} | {same} | "
                   f"{cell['epochs']} | {milestones(cell['epochs'])} |")
    out += ["", "### Results: test top-1 (%), mean ± std over seeds", "",
            "Best = the maximum over epochs (the official `best.pth.tar`), last = the final epoch. "
            "Verdict: tfkd agrees when |Δ| ≤ 2·SE, Δ = mean(tfkd) − mean(PyTorch) and "
            "SE = √(s²_tfkd/n + s²_PyTorch/n), the standard error of the difference of the means "
            "(about a two-sided 95 % test); n = finished seeds per side.", "",
            "| network / dataset | method | n (tfkd, PT) | best tfkd | best PyTorch | Δ best ± SE | verdict (best) | last tfkd | last PyTorch | Δ last ± SE | verdict (last) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for cell in CELLS:
        for method in METHODS:
            sel = {s: [r for r in results if r["cell"] == cell["key"] and r["method"] == method and r["side"] == s and r["finished"]] for s in SIDES}
            if not sel["tfkd"] and not sel["torch"]:
                continue
            row = [f"{cell['model']} /{cell['width_divisor']}, {cell['dataset']}", method, f"{len(sel['tfkd'])}, {len(sel['torch'])}"]
            for key in ("best", "last"):
                a = [r[key] for r in sel["tfkd"]]
                b = [r[key] for r in sel["torch"]]
                d, se, v = verdict(a, b)
                row += [fmt(mean_std(a)), fmt(mean_std(b)), "–" if d is None else f"{d:+.2f} ± {se:.2f}", v]
                if key == "best":
                    verdicts.append((cell, method, v))
            out.append("| " + " | ".join(row) + " |")
    out += ["", "### Losses, mean ± std over seeds (diagnostics)", "",
            "Train loss of the last epoch (the method's own loss, image-weighted mean over the epoch) and the "
            "test cross-entropy after epoch 1 (the warm-up epoch) and after the last epoch.", "",
            "| network / dataset | method | last train loss tfkd | PyTorch | epoch-1 test loss tfkd | PyTorch | last test loss tfkd | PyTorch |",
            "|---|---|---|---|---|---|---|---|"]
    for cell in CELLS:
        for method in METHODS:
            sel = {s: [r for r in results if r["cell"] == cell["key"] and r["method"] == method and r["side"] == s and r["finished"]] for s in SIDES}
            if not sel["tfkd"] and not sel["torch"]:
                continue
            row = [f"{cell['model']} /{cell['width_divisor']}, {cell['dataset']}", method]
            for pick in (lambda r: r["train_loss"][-1], lambda r: r["test_loss"][0], lambda r: r["test_loss"][-1]):
                row += [fmt(mean_std([pick(r) for r in sel[s]]), 3) for s in SIDES]
            out.append("| " + " | ".join(row) + " |")
    out += ["", "### Per-run best top-1 (%) and wall time", "",
            "| network / dataset | method | side | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean s/epoch |",
            "|---|---|---|" + "---|" * len(SEEDS) + "---|"]
    for cell in CELLS:
        for method in METHODS:
            for side in SIDES:
                rs = {r["seed"]: r for r in results if r["cell"] == cell["key"] and r["method"] == method and r["side"] == side}
                if not rs:
                    continue
                vals = [(f"{rs[s]['best']:.2f}" + ("" if rs[s]["finished"] else f" (partial, {rs[s]['epochs']} ep)")) if s in rs else "–" for s in SEEDS]
                secs = [r["seconds"] / r["epochs"] for r in rs.values()]
                out.append(f"| {cell['model']} /{cell['width_divisor']}, {cell['dataset']} | {method} | "
                           f"{'tfkd' if side == 'tfkd' else 'PyTorch'} | " + " | ".join(vals) + f" | {statistics.mean(secs):.1f} |")
    out += ["", "### Test curves", ""]
    for cell in CELLS:
        if any(r["cell"] == cell["key"] for r in results):
            plot(results, cell)
            rel = os.path.relpath(os.path.join(FIG_DIR, f"{cell['key']}.png"), os.path.dirname(os.path.abspath(DOC)))
            out.append(f"![{cell['key']}]({rel})")
            out.append("")
    out.append(END)
    gen = "\n".join(out) + "\n"
    try:
        with open(DOC) as f:
            doc = f.read()
    except OSError:
        doc = "# Validation: tfkd against PyTorch\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        doc = head + gen.rstrip("\n") + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + gen
    tmp = DOC + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, DOC)
    return verdicts


def main():
    global DOC, FIG_DIR, METHODS, SEEDS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tfkd", default=os.environ.get("TFKD_BIN", "tfkd"), help="the tfkd binary (default $TFKD_BIN or tfkd on PATH)")
    p.add_argument("--python", default=os.environ.get("PYTHON", "python3"), help="python with torch (default $PYTHON or python3)")
    p.add_argument("--data-dir", default=os.environ.get("TFKD_DATA_DIR"), help="folder with cifar10-mini/ and tiny-imagenet-10/")
    p.add_argument("--work", default=os.environ.get("TFKD_VALIDATION_WORK", os.path.join(tempfile.gettempdir(), "tfkd-validation")),
                   help="run folders (outside the repository)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="compute threads per run")
    p.add_argument("--cells", default="", help="comma-separated cell keys to run (default all)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default all)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--doc", default=DOC, help="the markdown file whose generated part is rewritten")
    p.add_argument("--fig-dir", default=FIG_DIR, help="where the PNGs and results.json go")
    p.add_argument("--cell", action="append", default=[], metavar="KEY:MODEL:DATASET:WIDTH:EPOCHS",
                   help="replace the matrix by these cells (repeatable), e.g. mbv2-w8:mobilenet_v2:cifar10-mini:8:5")
    p.add_argument("--tfkd-note", default="", help="how the tfkd binary was built (default: the repository's HEAD)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from --work (keeps the sweep's recorded machine facts)")
    args = p.parse_args()
    if args.cell:
        CELLS[:] = []
        for spec in args.cell:
            key, model, dataset, width, epochs = spec.split(":")
            CELLS.append(dict(key=key, model=model, dataset=dataset, width_divisor=int(width), epochs=int(epochs)))
    DOC, FIG_DIR = os.path.abspath(args.doc), os.path.abspath(args.fig_dir)
    METHODS = [m for m in args.methods.split(",") if m]
    SEEDS = [int(x) for x in args.seeds.split(",") if x.strip()]
    if not args.report_only and not args.data_dir:
        sys.exit("set TFKD_DATA_DIR or --data-dir")
    args.work = os.path.abspath(args.work)
    if args.data_dir:
        args.data_dir = os.path.abspath(args.data_dir)
    info = system_info(args)
    info.update(jobs=args.jobs, threads=args.threads, date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    if args.tfkd_note:
        info["commit"] = args.tfkd_note
    lock = threading.Lock()
    if args.report_only:
        # Keep the machine and version facts of the sweep that trained the runs.
        try:
            with open(os.path.join(FIG_DIR, "results.json")) as f:
                stored = json.load(f)["info"]
            info = dict(stored, date=stored.get("date", info["date"]), **({"commit": args.tfkd_note} if args.tfkd_note else {}))
        except (OSError, ValueError, KeyError):
            pass
        report(args, info, "report regenerated from the finished runs")
        return
    wanted = set(filter(None, args.cells.split(",")))
    jobs = [(side, cell, method, seed) for cell in CELLS if not wanted or cell["key"] in wanted
            for seed in SEEDS for method in METHODS for side in SIDES]
    todo = [j for j in jobs if not finished(args.work, *j)]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} finished, {len(todo)} to train", flush=True)
    done = [len(jobs) - len(todo)]
    t_start = time.time()

    def one(job):
        side, cell, method, seed = job
        cmd, env = command(args, *job)
        log = run_dir(args.work, side, cell, method, seed) + ".log"
        os.makedirs(os.path.dirname(log), exist_ok=True)
        t0 = time.time()
        with open(log, "w") as f:
            rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        with lock:
            done[0] += 1
            print(f"[{time.time() - t_start:7.0f}s] {done[0]}/{len(jobs)} {side} {cell['key']} {method} s{seed}: rc {rc}, "
                  f"{time.time() - t0:.0f}s", flush=True)
            try:
                report(args, info, f"{done[0]} of {len(jobs)} runs done so far")
            except Exception as e:  # a report error must not stop the sweep
                print(f"report failed: {e!r}", flush=True)
        return rc

    with cf.ThreadPoolExecutor(max_workers=args.jobs) as ex:
        rcs = list(ex.map(one, todo))
    status = "sweep complete" if all(rc == 0 for rc in rcs) else f"sweep ended, {sum(rc != 0 for rc in rcs)} runs failed"
    verdicts = report(args, info, status)
    for cell, method, v in verdicts:
        print(f"{cell['key']} {method}: {v}")


if __name__ == "__main__":
    main()
