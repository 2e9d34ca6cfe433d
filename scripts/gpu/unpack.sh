# Sourced by scripts/gpu/check.sh and accuracy.sh, on the GPU machine:
# `unpack NAME` turns prepare.sh's NAME.xz into the executable NAME (with
# xz, else Python's lzma; an older NAME.gz with gunzip), replacing a NAME
# unpacked before. Without either archive it leaves NAME as it is; a
# failed unpacking says so and leaves no NAME behind.
unpack() {
  if [ -f "$1.xz" ]; then
    rm -f "$1"
    if command -v xz >/dev/null 2>&1; then
      xz -dc "$1.xz" > "$1.tmp"
    else
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1.xz" "$1.tmp"
    fi
    if [ $? -eq 0 ]; then
      mv "$1.tmp" "$1" && rm -f "$1.xz"
    else
      rm -f "$1.tmp"
      echo "unpack: could not unpack $1.xz" >&2
    fi
  elif [ -f "$1.gz" ]; then
    gunzip -f "$1.gz" || echo "unpack: could not unpack $1.gz" >&2
  fi
  if [ -f "$1" ]; then chmod +x "$1"; fi
}
