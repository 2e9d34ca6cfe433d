# Sourced by scripts/gpu/check.sh and accuracy.sh, on the GPU machine:
# `unpack NAME` turns prepare.sh's NAME.xz into the executable NAME (with
# xz, else Python's lzma; an older NAME.gz with gunzip). Nothing to do when
# NAME is already there; a missing NAME is left missing for the caller.
unpack() {
  if [ -f "$1.xz" ]; then
    if command -v xz >/dev/null 2>&1; then
      xz -dc "$1.xz" > "$1.tmp"
    else
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1.xz" "$1.tmp"
    fi && mv "$1.tmp" "$1" && rm -f "$1.xz"
  elif [ -f "$1.gz" ]; then
    gunzip -f "$1.gz"
  fi
  if [ -f "$1" ]; then chmod +x "$1"; fi
}
