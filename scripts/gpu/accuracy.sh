#!/usr/bin/env bash
# The accuracy half of issue 12's "done when", on one GPU: ResNet18 on
# cifar10-mini (5,000 real CIFAR-10 training images, 2,000 test), the official
# recipe (batch 128, lr 0.1, momentum 0.9, weight decay 5e-4, one warm-up
# epoch, x0.2 at the milestones 60/120/160 scaled to the run: 5, 9, 12 of 15
# epochs), 3 seeds each side: `tfkd train` against
# scripts/validation/torch_train.py (the official code's recipe in PyTorch,
# cudnn.benchmark, TF32 convolutions). It passes when tfkd's mean best top-1
# is within one standard deviation of PyTorch's. Runs from .gpu/ as check.sh
# does (scripts/gpu/prepare.sh fills it); everything lands in $OUT.
# EPOCHS, MILESTONES, SEEDS and PRECISION (tfkd's: tf32, f32 or bf16)
# override the defaults. About 15 s a run at PyTorch's speed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "${GPU_DIR:-.gpu}"
gpu=$(pwd)
. "$here/lib.sh"
unpack tfkd
find_cudnn
epochs=${EPOCHS:-15}
milestones=${MILESTONES:-5,9,12}
precision=${PRECISION:-tf32}
mkdir -p acc
for s in ${SEEDS:-0 1 2}; do
  cat > acc/tfkd-s$s.toml <<TOML
# written by scripts/gpu/accuracy.sh; paths are relative to this file
epochs = $epochs
out_dir = "runs"
name = "resnet18-baseline-$precision-s$s"
seed = $s
device = "cuda"
precision = "$precision"
[model]
name = "resnet18"
[data]
dataset = "cifar10-mini"
root = "../data/cifar10-mini"
[optim]
batch_size = 128
lr = 0.1
[schedule]
warmup_epochs = 1
decay = { kind = "multi_step", milestones = [$milestones], gamma = 0.2 }
[strategy]
method = "baseline"
TOML
  echo "== seed $s: tfkd ($precision)"; date
  timeout 300 ./run-cuda.sh ./tfkd -q train -c acc/tfkd-s$s.toml 2>&1 | tail -2
  echo "== seed $s: PyTorch"; date
  (cd "$repo" && timeout 300 python3 scripts/validation/torch_train.py --device cuda --workers 4 --data-dir "$gpu/data" \
      --dataset cifar10-mini --model resnet18 --epochs $epochs --milestones $milestones --seed $s \
      --out "$gpu/acc/torch-s$s") 2>&1 | tail -1
done
python3 - "$gpu/acc" "$precision" <<'PY' | tee ${OUT:-.}/accuracy.md
import glob, json, os, statistics, sys
acc, precision = sys.argv[1], sys.argv[2]
def tfkd_best(run):
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if l.strip()]
    return max(r["test_top1"] for r in rows if "test_top1" in r)
ours = [tfkd_best(r) for r in sorted(glob.glob(os.path.join(acc, "runs", f"resnet18-baseline-{precision}-s*")))]
theirs = [json.load(open(m))["summary"]["best_top1"] for m in sorted(glob.glob(os.path.join(acc, "torch-s*", "metrics.json")))]
print(f"ResNet18, cifar10-mini, best test top-1 (%), tfkd precision {precision}")
print()
print("| side | runs | per seed | mean | std |")
print("|---|---:|---|---:|---:|")
for name, v in (("tfkd", ours), ("PyTorch", theirs)):
    sd = statistics.stdev(v) if len(v) > 1 else float("nan")
    print(f"| {name} | {len(v)} | {', '.join('%.2f' % x for x in v)} | {statistics.mean(v) if v else float('nan'):.2f} | {sd:.2f} |")
if len(ours) > 1 and len(theirs) > 1:
    gap, sd = abs(statistics.mean(ours) - statistics.mean(theirs)), statistics.stdev(theirs)
    print()
    print(f"|mean gap| {gap:.2f} vs PyTorch's std {sd:.2f}: {'within' if gap <= sd else 'NOT within'} one standard deviation")
PY
date
