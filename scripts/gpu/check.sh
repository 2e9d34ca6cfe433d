#!/usr/bin/env bash
# One device session (docs/PERFORMANCE.md, "On CUDA"): the CUDA ops against
# the CPU, tfkd vs PyTorch training steps on CUDA (the ratio table), real
# training on cifar10-mini, the NCCL tests and the data-parallel replicas,
# then the alternative paths (no cuDNN, depthwise on cuDNN), most important
# first: an estimated 9 to 10 minutes on one GPU, so run it with the device
# tool's timeout_s near 590 (a cut-off loses only the last alternatives;
# what the steps wrote still comes back). Everything lands in $OUT (the
# device tool's output folder; set it yourself elsewhere).
#
# Prepare `.gpu/` on the build machine with `scripts/gpu/prepare.sh` (tfkd and
# the cuda_ops and zoo parity test binaries built with `--features cuda`, run-cuda.sh, the
# cifar10-mini data), carry it, then on the GPU machine, from the repository
# root: `bash scripts/gpu/check.sh`. After changing this script, rehearse it
# on the build machine with `scripts/gpu/dry_run.sh` (CPU builds, a stand-in
# nvidia-smi: it must run to its end).
# MODELS, CONFIGS (default: base), TRAIN_LIMIT (seconds per training run) and TRAIN_ARGS (extra
# `tfkd train` arguments, e.g. `--set epochs=3`) override the defaults;
# NOCUDNN_MODELS times those models with TFKD_CUDNN=0 (tfkd's own CUDA conv
# and BatchNorm paths: the before/after of cuDNN in the same session),
# DEPTHWISE_CUDNN_MODELS (default: mobilenet_v2 shufflenet_v2) with
# TFKD_DEPTHWISE=cudnn (depthwise convolutions on cuDNN instead of tfkd's
# kernels: which default is faster), F32_MODELS with `--precision f32` (no TF32), BF16_MODELS (default: MODELS)
# with `--precision bf16` (the ratio table's bf16 column, ratio-bf16.md),
# BF16_CONFIGS (default: base) trains in bf16 too, CANDLE_CONV_MODELS under
# TFKD_CONV=candle (candle's own convolutions), KEEP_GRAPH_MODELS (default:
# resnet18 mobilenet_v2) with TFKD_KEEP_GRAPH=1 (every activation kept until
# the step ends: the peak without the releasing backward pass).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "${GPU_DIR:-.gpu}"
cp "$here"/c10mini-*.toml .
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
. "$here/lib.sh"
for b in tfkd cuda_ops parity nccl tfkd-nccl; do unpack $b; done
find_cudnn
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch;print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  echo "cuDNN for tfkd: ${TFKD_CUDNN_LIB:-none found}"
  echo "tfkd commit: $(cat commit.txt 2>/dev/null)"
  nproc; } 2>&1 | tee $OUT/gpu.txt
echo "== CUDA ops vs CPU, cuDNN"; date
timeout 240 ./run-cuda.sh ./cuda_ops --test-threads=1 --nocapture > $OUT/cuda-ops.txt 2>&1; echo "exit $?" >> $OUT/cuda-ops.txt
grep -E "^test |test result|through|panicked|error" $OUT/cuda-ops.txt | head -40
echo "== the zoo's PyTorch parity, on CUDA"; date
TFKD_FIXTURES="$here/../../fixtures" timeout 240 ./run-cuda.sh ./parity --test-threads=1 --nocapture > $OUT/parity-cuda.txt 2>&1; echo "exit $?" >> $OUT/parity-cuda.txt
grep -E "test result|panicked|differ" $OUT/parity-cuda.txt | head -20
models="${MODELS:-cnn resnet18 mobilenet_v2 shufflenet_v2 densenet121 resnext29}"
sample() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$1" & echo $!; }
for m in $models; do
  s=$(sample mem-tfkd-$m.txt)
  timeout 150 ./run-cuda.sh ./tfkd bench-step --models $m --batch 128 --device cuda --warmup 3 --steps 10 --json $OUT/tfkd-cuda.jsonl 2>&1 | tail -4
  kill $s; echo "$m tfkd nvidia-smi peak MB $(sort -n mem-tfkd-$m.txt | tail -1)" | tee -a $OUT/mem.txt
  s=$(sample mem-torch-$m.txt)
  (cd "$here/../.." && timeout 100 python3 scripts/bench_steps_torch.py --models $m --device cuda --batch 128 --warmup 3 --steps 10 --json $OUT/torch-cuda.jsonl) 2>&1 | tail -3
  kill $s; echo "$m torch nvidia-smi peak MB $(sort -n mem-torch-$m.txt | tail -1)" | tee -a $OUT/mem.txt
done
for m in ${BF16_MODELS:-$models}; do
  timeout 150 ./run-cuda.sh ./tfkd bench-step --models $m --batch 128 --device cuda --precision bf16 --warmup 3 --steps 10 --json $OUT/tfkd-cuda-bf16.jsonl 2>&1 | tail -2
done
for m in ${F32_MODELS:-}; do
  timeout 150 ./run-cuda.sh ./tfkd bench-step --models $m --batch 128 --device cuda --precision f32 --warmup 3 --steps 10 --json $OUT/tfkd-cuda-f32.jsonl 2>&1 | tail -2
done
for m in ${CANDLE_CONV_MODELS:-}; do
  TFKD_CONV=candle timeout 150 ./run-cuda.sh ./tfkd bench-step --models $m --batch 128 --device cuda --warmup 3 --steps 10 --json $OUT/tfkd-cuda-candle-conv.jsonl 2>&1 | tail -2
done
(cd "$here/../.." && python3 scripts/bench_steps_torch.py --torch-json $OUT/torch-cuda.jsonl --compare $OUT/tfkd-cuda.jsonl --markdown) | tee $OUT/ratio.md
# The planner's measured throughputs (CUDA_MEASURED in crates/tfkd-zoo/src/registry.rs), ready to paste.
(cd "$here/../.." && python3 scripts/bench_steps_torch.py --torch-json $OUT/torch-cuda.jsonl --compare $OUT/tfkd-cuda.jsonl \
  --rust "one $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(date +%F)") > $OUT/cuda-measured.rs
[ -s $OUT/tfkd-cuda-bf16.jsonl ] && (cd "$here/../.." && python3 scripts/bench_steps_torch.py --torch-json $OUT/torch-cuda.jsonl --compare $OUT/tfkd-cuda-bf16.jsonl --markdown) | tee $OUT/ratio-bf16.md
for c in ${CONFIGS:-base}; do
  echo "== train $c"; date
  timeout ${TRAIN_LIMIT:-150} ./run-cuda.sh ./tfkd -q train -c c10mini-$c.toml ${TRAIN_ARGS:-} 2>&1 | tail -5
done
# The same baseline recipe in bf16 (its own run name): accuracy beside f32's.
for c in ${BF16_CONFIGS:-base}; do
  echo "== train $c, precision bf16"; date
  timeout ${TRAIN_LIMIT:-150} ./run-cuda.sh ./tfkd -q train -c c10mini-$c.toml --set precision=\"bf16\" --set name=\"c10mini-$c-bf16\" ${TRAIN_ARGS:-} 2>&1 | tail -5
done
for d in runs/*/; do sed "s|^|$(basename $d) |" $d/metrics.jsonl; done > $OUT/train-metrics.txt 2>/dev/null
# Data parallelism over NCCL (issue 13). The `nccl` test binary (tfkd-core
# built with `--features nccl`): on one GPU, a group of one process through
# NCCL (id over TCP, communicator, all-reduce, SGD steps) must train bit for
# bit as a process alone; on two GPUs, two replicas at half the batch as one
# process at the whole batch. NCCL needs a GPU per rank, so one GPU runs the
# first only. With two GPUs, also two `tfkd train` processes against the
# threads below at the same global batch: the loss curves should agree up
# to NCCL's summation order; that needs `tfkd-nccl`
# (`PREPARE_TFKD_NCCL=1 scripts/gpu/prepare.sh`), else the processes sum
# over TCP, which `nccl.txt` then says.
echo "== NCCL"; date
if [ -f nccl ]; then
  NCCL_DEBUG=${NCCL_DEBUG:-WARN} timeout 120 ./run-cuda.sh ./nccl --test-threads=1 --nocapture > $OUT/nccl-test.txt 2>&1
  echo "exit $?" >> $OUT/nccl-test.txt
  grep -E "^test |test result|NCCL,|skipped|panicked|exit" $OUT/nccl-test.txt | head -20 | tee $OUT/nccl.txt
else
  echo "no nccl test binary here: scripts/gpu/prepare.sh builds it" | tee $OUT/nccl.txt
fi
# Two replicas as threads of one process on one GPU (`tfkd train --nproc 2`:
# each thread has its own CUDA stream, and the group synchronises them),
# against one replica at the same global batch: AlexNet has no BatchNorm,
# so the two runs' losses and accuracies must agree up to float rounding
# (cuDNN's deterministic algorithms; a race between the threads' streams
# would show as a gap). On the CPU (Intel Xeon, 2 cores, 2026-12-08) these settings gave train losses of
# 2.178128 and 2.178126 after 2 epochs, and 19.30 % and 19.25 % top-1.
echo "== two replicas as threads on one GPU vs one replica (AlexNet)"; date
dp="--set model.name=\"alexnet\" --set epochs=2 --set optim.lr=0.05 --set schedule.warmup_epochs=0"
for n in 1 2; do
  TFKD_CUDNN_DETERMINISTIC=1 timeout ${TRAIN_LIMIT:-150} ./run-cuda.sh ./tfkd -q train -c c10mini-base.toml --nproc $n \
    --set out_dir=\"nproc$n\" $dp 2>&1 | tail -2
done
for d in nproc1/*/ nproc2/*/; do sed "s|^|$d |" $d/metrics.jsonl; done 2>/dev/null | tee -a $OUT/nccl.txt
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  echo "== NCCL: 2 processes vs 2 threads"; date
  trainer=./tfkd-nccl
  [ -f $trainer ] || { trainer=./tfkd; echo "no tfkd-nccl: the two processes sum over TCP" | tee -a $OUT/nccl.txt; }
  export MASTER_ADDR=127.0.0.1 MASTER_PORT=29517
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r TFKD_CUDNN_DETERMINISTIC=1 timeout ${TRAIN_LIMIT:-150} ./run-cuda.sh $trainer -q train \
      -c c10mini-base.toml --set out_dir=\"nccl-procs\" $dp > nccl-rank$r.log 2>&1 &
  done
  wait
  tail -3 nccl-rank0.log nccl-rank1.log | tee -a $OUT/nccl.txt
  # Against the threads above (nproc1/, nproc2/): the same global batch.
  for d in nccl-procs/*/ nproc1/*/ nproc2/*/; do sed "s|^|$d |" $d/metrics.jsonl; done | tee -a $OUT/nccl.txt
else
  echo "== one GPU: the two-process NCCL run skipped (NCCL needs a GPU per process)" | tee -a $OUT/nccl.txt
fi
# The alternatives, last (what a short device window can lose): tfkd's
# own CUDA paths without cuDNN, and depthwise convolutions on cuDNN.
for m in ${NOCUDNN_MODELS:-resnet18}; do
  TFKD_CUDNN=0 timeout 150 ./run-cuda.sh ./tfkd bench-step --models $m --batch 128 --device cuda --warmup 3 --steps 10 --json $OUT/tfkd-cuda-no-cudnn.jsonl 2>&1 | tail -2
done
for m in ${DEPTHWISE_CUDNN_MODELS:-mobilenet_v2 shufflenet_v2}; do
  TFKD_DEPTHWISE=cudnn timeout 150 ./run-cuda.sh ./tfkd bench-step --models $m --batch 128 --device cuda --warmup 3 --steps 10 --json $OUT/tfkd-cuda-depthwise-cudnn.jsonl 2>&1 | tail -2
done
# The whole graph kept through the backward pass (candle's plain backward),
# against the default that hands activations back as it goes: the peak's
# before/after on the same machine (compare peak_mb with tfkd-cuda.jsonl).
for m in ${KEEP_GRAPH_MODELS:-resnet18 mobilenet_v2}; do
  TFKD_KEEP_GRAPH=1 timeout 150 ./run-cuda.sh ./tfkd bench-step --models $m --batch 128 --device cuda --warmup 3 --steps 10 --json $OUT/tfkd-cuda-keep-graph.jsonl 2>&1 | tail -2
done
echo "== CUDA ops vs CPU, TFKD_CUDNN=0"; date
TFKD_CUDNN=0 timeout 240 ./run-cuda.sh ./cuda_ops --test-threads=1 --nocapture > $OUT/cuda-ops-no-cudnn.txt 2>&1; echo "exit $?" >> $OUT/cuda-ops-no-cudnn.txt
grep -E "test result|through|panicked" $OUT/cuda-ops-no-cudnn.txt | head -20
echo "== CUDA convolutions vs CPU, TFKD_DEPTHWISE=cudnn (depthwise on cuDNN, not tfkd's kernels)"; date
TFKD_DEPTHWISE=cudnn timeout 120 ./run-cuda.sh ./cuda_ops convolutions --test-threads=1 --nocapture > $OUT/cuda-ops-depthwise-cudnn.txt 2>&1; echo "exit $?" >> $OUT/cuda-ops-depthwise-cudnn.txt
grep -E "test result|panicked" $OUT/cuda-ops-depthwise-cudnn.txt | head -10
date
date
