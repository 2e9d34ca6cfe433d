#!/usr/bin/env bash
# Fills the git-ignored `.gpu/` folder that scripts/gpu/check.sh runs from on a
# GPU machine (which has no Rust): run it here, on the build machine, from any
# folder, then carry `.gpu` to the device and run `bash scripts/gpu/check.sh`.
#
#   tfkd.xz       `tfkd` built with `--features cuda` (stripped, xz: half
#                 gzip's size, and the folder must stay under 64 MiB)
#   cuda_ops.xz   tfkd-core's CUDA-vs-CPU op tests (tests/cuda_ops.rs)
#   parity.xz     tfkd-zoo's PyTorch parity tests, which also run on CUDA
#                 (they read the repository's fixtures/, carried with the tree)
#   nccl.xz       tfkd-core's NCCL tests (tests/nccl.rs, `--features nccl`;
#                 libnccl comes from PyTorch's wheels on the GPU machine)
#   tfkd-nccl.xz  only with PREPARE_TFKD_NCCL=1: `tfkd` built with
#                 `--features nccl`, for check.sh's two-process run on a
#                 machine with two GPUs (one more release build)
#   run-cuda.sh   the launcher that puts the CUDA libraries on the path
#   data/cifar10-mini   the 5k/2k real CIFAR-10 subset, for the training runs
#
# Needs ../shared/gpu/build-cuda.sh (CUDA 13 wheels, nvcc; about 20 minutes
# cold on 2 cores) and ../shared/data/cifar10-mini, or SHARED_DIR=folder
# holding both. Reuses $CARGO_TARGET_DIR (default ~/.cache/tfkd-target).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
shared=${SHARED_DIR:-$root/../shared}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tfkd-target}
# --with-nccl every time: the wheel set (and build-cuda.sh's stamp) stays the
# same whichever binaries are built.
eval "$("$shared"/gpu/build-cuda.sh --with-nccl --print-env)"
cargo build --release -p tfkd-runner --features cuda
. scripts/gpu/lib.sh
cuda_ops=$(test_binary tfkd-core cuda_ops --release --features cuda)
parity=$(test_binary tfkd-zoo parity --release --features cuda)
nccl=$(test_binary tfkd-core nccl --release --features nccl)
[ -n "$cuda_ops" ] && [ -n "$parity" ] && [ -n "$nccl" ] || { echo "prepare.sh: a test binary was not built" >&2; exit 1; }
mkdir -p .gpu/data
pack() { strip -o .gpu/"$2" "$1" && rm -f .gpu/"$2".gz && xz -9 -T0 -f .gpu/"$2"; }
pack "$CARGO_TARGET_DIR/release/tfkd" tfkd
pack "$cuda_ops" cuda_ops
pack "$parity" parity
pack "$nccl" nccl
if [ "${PREPARE_TFKD_NCCL:-0}" = 1 ]; then
  cargo build --release -p tfkd-runner --features nccl
  pack "$CARGO_TARGET_DIR/release/tfkd" tfkd-nccl
else
  rm -f .gpu/tfkd-nccl.xz .gpu/tfkd-nccl  # an older one would not match this commit
fi
cp "$shared"/gpu/run-cuda.sh .gpu/
[ -d .gpu/data/cifar10-mini ] || cp -r "$shared"/data/cifar10-mini .gpu/data/
git rev-parse HEAD > .gpu/commit.txt
du -sh .gpu
[ "$(du -sm .gpu | cut -f1)" -lt 64 ] || echo "prepare.sh: WARNING: .gpu is over the device tool's 64 MiB carry limit" >&2
echo "prepare.sh: .gpu is ready (commit $(cut -c1-12 .gpu/commit.txt)); on the GPU machine: bash scripts/gpu/check.sh"
