#!/usr/bin/env bash
# A GPU-less rehearsal of scripts/gpu/check.sh, on the build machine: the
# device window is short and rare, so a broken path, variable or step in the
# check should be found here, not there. It fills a scratch copy of `.gpu/`
# with CPU builds (tfkd and the cuda_ops, parity and nccl test binaries, packed as
# prepare.sh packs them), puts a stand-in `nvidia-smi` first on PATH, and runs
# the whole check with the small models: every GPU step then fails with "no
# CUDA" (tfkd) or "no NVIDIA driver" (PyTorch), and the script must go on to
# its end and leave its files in $OUT.
#
#   bash scripts/gpu/dry_run.sh        # PYTHON=python-with-torch (default python3)
#
# Prints the check's log and the files it left; exits non-zero if the check
# stopped early, a step named a missing file or folder, or bash reported an
# error.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tfkd-target}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/gpu/data" "$scratch/bin" "$scratch/out"

cargo build -q -p tfkd-runner
. scripts/gpu/lib.sh
cp "$CARGO_TARGET_DIR/debug/tfkd" "$scratch/gpu/tfkd"
cp "$(test_binary tfkd-core cuda_ops -q)" "$scratch/gpu/cuda_ops"
cp "$(test_binary tfkd-zoo parity -q)" "$scratch/gpu/parity"
cp "$(test_binary tfkd-core nccl -q)" "$scratch/gpu/nccl"
xz -1 -T0 "$scratch/gpu/tfkd" "$scratch/gpu/cuda_ops" "$scratch/gpu/parity" "$scratch/gpu/nccl"
shared=${SHARED_DIR:-$root/../shared}
if [ -f "$shared/gpu/run-cuda.sh" ]; then
  cp "$shared/gpu/run-cuda.sh" "$scratch/gpu/"
else
  printf '#!/bin/sh\nb=$1; shift; exec "$b" "$@"\n' > "$scratch/gpu/run-cuda.sh"
  chmod +x "$scratch/gpu/run-cuda.sh"
fi
[ -d "$shared/data/cifar10-mini" ] && ln -s "$(cd "$shared/data/cifar10-mini" && pwd)" "$scratch/gpu/data/cifar10-mini"
git rev-parse HEAD > "$scratch/gpu/commit.txt"

# The stand-ins: a GPU that answers nvidia-smi's queries, and the Python
# that has PyTorch (a wrapper script, never a link: writing through a link
# would write the interpreter).
cat > "$scratch/bin/nvidia-smi" <<'EOF'
#!/usr/bin/env bash
case "$*" in
  *-lms*) while true; do echo 1000; sleep 0.05; done ;;
  *-L*) echo "GPU 0: Stand-in GPU (UUID: GPU-0)" ;;
  *name,driver_version*) printf 'name, driver_version, memory.total [MiB]\nStand-in GPU, 0.0, 0 MiB\n' ;;
  *name*) echo "Stand-in GPU" ;;
  *) echo "nvidia-smi stand-in" ;;
esac
EOF
python=$(command -v "${PYTHON:-python3}")
printf '#!/bin/sh\nexec "%s" "$@"\n' "$python" > "$scratch/bin/python3"
chmod +x "$scratch/bin/nvidia-smi" "$scratch/bin/python3"

log=$scratch/check.log
small="cnn"
PATH="$scratch/bin:$PATH" GPU_DIR="$scratch/gpu" OUT="$scratch/out" MODELS=$small BF16_MODELS=$small \
  KEEP_GRAPH_MODELS=$small NOCUDNN_MODELS=$small DEPTHWISE_CUDNN_MODELS=$small TRAIN_LIMIT=30 \
  timeout 600 bash scripts/gpu/check.sh > "$log" 2>&1 || true
cat "$log"
echo "== files the check left in \$OUT:"; ls "$scratch/out"
status=0
grep -q "TFKD_DEPTHWISE=cudnn (depthwise" "$log" || { echo "dry_run: the check stopped before its last step" >&2; status=1; }
if grep -E "No such file or directory|command not found|unbound variable|syntax error" "$log" | grep -v "torch-cuda.jsonl\|tfkd-cuda.*jsonl"; then
  echo "dry_run: the check named a missing file, command or variable (above)" >&2
  status=1
fi
for f in gpu.txt cuda-ops.txt parity-cuda.txt mem.txt ratio.md nccl-test.txt nccl.txt; do
  [ -e "$scratch/out/$f" ] || { echo "dry_run: the check left no $f" >&2; status=1; }
done
[ $status -eq 0 ] && echo "dry_run: the check ran to its end; every GPU step failed only for want of a GPU"
exit $status
