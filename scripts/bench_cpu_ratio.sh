#!/usr/bin/env bash
# The CPU ratio table of docs/PERFORMANCE.md: tfkd's training step against
# PyTorch's, in interleaved rounds (PyTorch, then tfkd, one process per model
# and framework), so that a shared machine's drift hits both alike.
#
# Usage: scripts/bench_cpu_ratio.sh OUT_DIR [ROUNDS] [MODELS]
#   PYTHON    the Python with PyTorch (default: python3)
#   TFKD      the tfkd binary (default: the release build, built if missing)
#   THREADS   threads for both (default: 2); BATCH (default: 128)
# Writes OUT_DIR/{torch,tfkd}N.jsonl and OUT_DIR/machine.txt, and prints the
# table (median of the rounds) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/bench_cpu_ratio.sh OUT_DIR [ROUNDS] [MODELS]}
rounds=${2:-3}
models=${3:-cnn,resnet18,mobilenet_v2,shufflenet_v2}
python=${PYTHON:-python3}
threads=${THREADS:-2}
batch=${BATCH:-128}
if [ -z "${TFKD:-}" ]; then
  cargo build --release -q -p tfkd-runner
  TFKD="$(cargo metadata --format-version 1 --no-deps | "$python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/tfkd"
fi
mkdir -p "$out"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cores: $(nproc)"
  echo "avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)"
  echo "rustc: $(rustc --version)"
  echo "torch: $("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
  echo "tfkd commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)"
  echo "threads: $threads, batch: $batch, rounds: $rounds"
} > "$out/machine.txt"
cat "$out/machine.txt"
for round in $(seq 1 "$rounds"); do
  IFS=, read -ra list <<< "$models"
  for model in "${list[@]}"; do
    echo "round $round: $model" >&2
    "$python" scripts/bench_steps_torch.py --models "$model" --batch "$batch" --threads "$threads" \
      --json "$out/torch$round.jsonl"
    RAYON_NUM_THREADS=$threads "$TFKD" bench-step --quiet --models "$model" --batch "$batch" \
      --json "$out/tfkd$round.jsonl"
  done
done
"$python" scripts/bench_steps_torch.py --rounds "$out" --markdown
