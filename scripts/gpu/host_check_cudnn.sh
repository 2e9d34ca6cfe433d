#!/usr/bin/env bash
# Checks tfkd's hand-written cuDNN declarations (crates/tfkd-core/src/cudnn.rs)
# on a machine without a GPU, against the real cuDNN 9 of the
# nvidia-cudnn-cu13 wheel:
#
#   1. scripts/gpu/cudnn_probe.cpp is compiled against the wheel's headers and
#      prints every declared function's C signature, the enum values and the
#      AlgoPerf layout;
#   2. tfkd-core's cudnn tests compare those lines with tfkd's declarations
#      (`the_declarations_match_cudnn_h`) and call the library's descriptor
#      functions, which need no GPU (`the_real_library_reads_back_what_tfkd_describes`):
#      each data type's size, the zoo's convolution shapes as cuDNN computes
#      them, BatchNorm's derived parameter shape, cuDNN's error text.
#
# What it cannot check: the calls that need a GPU (cudnnCreate, the searches,
# the convolutions, BatchNorm); tests/cuda_ops.rs runs those on a device.
# This is a developer's check, not a CI test (a 0.5 GB download).
#
#   CUDNN_WHEEL       the pip requirement (default nvidia-cudnn-cu13==9.19.0.56)
#   CUDNN_WHEEL_DIR   where it is installed (default ~/.cache/tfkd/cudnn-wheel)
#
# Usage: bash scripts/gpu/host_check_cudnn.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
wheel=${CUDNN_WHEEL:-nvidia-cudnn-cu13==9.19.0.56}
dir=${CUDNN_WHEEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tfkd/cudnn-wheel}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tfkd-target}
cudnn=$dir/nvidia/cudnn
if [ ! -f "$cudnn/lib/libcudnn.so.9" ]; then
  echo "host_check_cudnn.sh: installing $wheel into $dir (about 0.5 GB)"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input --no-deps \
    --target "$dir" "$wheel" > "$dir.pip.log" 2>&1 \
    || { echo "host_check_cudnn.sh: pip failed (log: $dir.pip.log)" >&2; exit 1; }
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# cudnn.h includes two CUDA headers for three types; the probe needs no more
# of CUDA than these declarations (the same as the real headers').
cat > "$work/cuda_runtime_api.h" <<'H'
typedef struct CUstream_st *cudaStream_t;
typedef struct CUgraph_st *cudaGraph_t;
H
cat > "$work/library_types.h" <<'H'
typedef enum libraryPropertyType_t { MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL } libraryPropertyType;
H
g++ -std=c++17 -Wall -Werror -I"$work" -I"$cudnn/include" "$root/scripts/gpu/cudnn_probe.cpp" -o "$work/probe"
"$work/probe" > "$work/probe.txt"
echo "host_check_cudnn.sh: cudnn.h of $(grep -E '^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) ' "$cudnn/include/cudnn_version.h" | awk '{printf "%s%s", sep, $3; sep="."}'): $(wc -l < "$work/probe.txt") facts"
cd "$root"
TFKD_CUDNN_LIB="$cudnn/lib/libcudnn.so.9" TFKD_CUDNN_PROBE="$work/probe.txt" \
  cargo test -p tfkd-core --lib cudnn:: -- --nocapture
