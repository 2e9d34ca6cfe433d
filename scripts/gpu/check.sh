#!/usr/bin/env bash
# One device session (docs/PERFORMANCE.md, "On CUDA"): tfkd vs PyTorch
# training steps on CUDA, then real training on cifar10-mini. Everything lands
# in $OUT (the device tool's output folder; set it yourself elsewhere).
#
# Prepare, on the build machine, a git-ignored folder `.gpu/` holding
#   tfkd.gz       the stripped, gzipped `tfkd` from
#                 `../shared/gpu/build-cuda.sh -p tfkd-runner` (or any
#                 `cargo build --release -p tfkd-runner --features cuda`)
#   run-cuda.sh   the launcher that puts the CUDA libraries on the path
#   data/cifar10-mini   the 5k/2k CIFAR-10 subset (CIFAR binary format)
# then, on the GPU machine, from the repository root: `bash scripts/gpu/check.sh`.
# MODELS, CONFIGS, TRAIN_LIMIT (seconds per training run) and TRAIN_ARGS (extra
# `tfkd train` arguments, e.g. `--set epochs=3`) override the defaults;
# CANDLE_CONV_MODELS also times those models under TFKD_CONV=candle (candle's
# own convolutions: the before/after of tfkd's conv paths in the same session).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "${GPU_DIR:-.gpu}"
cp "$here"/c10mini-*.toml .
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
gunzip -f tfkd.gz && chmod +x tfkd
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch;print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  nproc; } 2>&1 | tee $OUT/gpu.txt
models="${MODELS:-cnn resnet18 mobilenet_v2 shufflenet_v2}"
sample() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$1" & echo $!; }
for m in $models; do
  s=$(sample mem-tfkd-$m.txt)
  timeout 150 ./run-cuda.sh ./tfkd bench-step --models $m --batch 128 --device cuda --warmup 3 --steps 10 --json $OUT/tfkd-cuda.jsonl 2>&1 | tail -4
  kill $s; echo "$m tfkd nvidia-smi peak MB $(sort -n mem-tfkd-$m.txt | tail -1)" | tee -a $OUT/mem.txt
  s=$(sample mem-torch-$m.txt)
  (cd "$here/../.." && timeout 100 python3 scripts/bench_steps_torch.py --models $m --device cuda --batch 128 --warmup 3 --steps 10 --json $OUT/torch-cuda.jsonl) 2>&1 | tail -3
  kill $s; echo "$m torch nvidia-smi peak MB $(sort -n mem-torch-$m.txt | tail -1)" | tee -a $OUT/mem.txt
done
for m in ${CANDLE_CONV_MODELS:-}; do
  TFKD_CONV=candle timeout 150 ./run-cuda.sh ./tfkd bench-step --models $m --batch 128 --device cuda --warmup 3 --steps 10 --json $OUT/tfkd-cuda-candle-conv.jsonl 2>&1 | tail -2
done
(cd "$here/../.." && python3 scripts/bench_steps_torch.py --torch-json $OUT/torch-cuda.jsonl --compare $OUT/tfkd-cuda.jsonl --markdown) | tee $OUT/ratio.md
for c in ${CONFIGS:-base reg lsr}; do
  echo "== train $c"; date
  timeout ${TRAIN_LIMIT:-150} ./run-cuda.sh ./tfkd -q train -c c10mini-$c.toml ${TRAIN_ARGS:-} 2>&1 | tail -5
done
for d in runs/*/; do sed "s|^|$(basename $d) |" $d/metrics.jsonl; done > $OUT/train-metrics.txt 2>/dev/null
date
# Data parallelism over NCCL (issue 13): with two GPUs or more and a `tfkd`
# built with `--features nccl` (`build-cuda.sh --with-nccl -p tfkd-runner
# --features nccl`), two processes on two GPUs against one process with two
# replicas (threads) at the same global batch: the loss curves should agree up
# to NCCL's summation order. NCCL needs one GPU per process, so one GPU skips.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  echo "== NCCL: 2 processes vs 2 threads"; date
  export MASTER_ADDR=127.0.0.1 MASTER_PORT=29517
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r timeout ${TRAIN_LIMIT:-150} ./run-cuda.sh ./tfkd -q train -c c10mini-base.toml \
      --set out_dir=\"nccl-procs\" --set epochs=3 > nccl-rank$r.log 2>&1 &
  done
  wait
  tail -3 nccl-rank0.log nccl-rank1.log | tee $OUT/nccl.txt
  timeout ${TRAIN_LIMIT:-150} ./run-cuda.sh ./tfkd -q train -c c10mini-base.toml --nproc 2 --set out_dir=\"nccl-threads\" --set epochs=3 2>&1 | tail -2
  for d in nccl-procs/*/ nccl-threads/*/; do sed "s|^|$d |" $d/metrics.jsonl; done | tee -a $OUT/nccl.txt
else
  echo "== NCCL: one GPU, skipped (NCCL needs a GPU per process)" | tee $OUT/nccl.txt
fi
date
