#!/usr/bin/env bash
# Fills the git-ignored `.gpu/` folder that scripts/gpu/check.sh runs from on a
# GPU machine (which has no Rust): run it here, on the build machine, from any
# folder, then carry `.gpu` to the device and run `bash scripts/gpu/check.sh`.
#
#   tfkd.gz       `tfkd` built with `--features cuda` (stripped, gzipped)
#   cuda_ops.gz   tfkd-core's CUDA-vs-CPU op tests (tests/cuda_ops.rs)
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
eval "$("$shared"/gpu/build-cuda.sh --print-env)"
cargo build --release -p tfkd-runner --features cuda
tests=$(cargo test --release -p tfkd-core --features cuda --test cuda_ops --no-run --message-format=json \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_ops":
        print(m["executable"])')
[ -n "$tests" ] || { echo "prepare.sh: no cuda_ops test binary was built" >&2; exit 1; }
mkdir -p .gpu/data
pack() { strip -o .gpu/"$2" "$1" && gzip -f .gpu/"$2"; }
pack "$CARGO_TARGET_DIR/release/tfkd" tfkd
pack "$tests" cuda_ops
cp "$shared"/gpu/run-cuda.sh .gpu/
[ -d .gpu/data/cifar10-mini ] || cp -r "$shared"/data/cifar10-mini .gpu/data/
git rev-parse HEAD > .gpu/commit.txt
du -sh .gpu
echo "prepare.sh: .gpu is ready (commit $(cut -c1-12 .gpu/commit.txt)); on the GPU machine: bash scripts/gpu/check.sh"
