#!/bin/sh
# The tfkd-vs-PyTorch validation sweep (docs/VALIDATION.md): runs
# scripts/validation/run.py with the Python of $PYTHON (torch, torchvision,
# numpy, matplotlib), default python3. Arguments pass through, e.g.
#   TFKD_DATA_DIR=/data scripts/validation/run.sh --tfkd target/debug/tfkd
exec "${PYTHON:-python3}" "$(dirname "$0")/run.py" "$@"
