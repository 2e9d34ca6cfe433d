# Shared by the scripts in scripts/gpu, which source it:
#
# On the build machine (prepare.sh, dry_run.sh):
# `test_binary PACKAGE TEST [cargo test arguments...]` builds the test
# binary TEST of PACKAGE (`--no-run`) and prints its path.
test_binary() {
  local package=$1 test=$2
  shift 2
  cargo test -p "$package" --test "$test" --no-run --message-format=json "$@" \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$test"
}

# On the GPU machine (check.sh, accuracy.sh):
#
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

# `find_cudnn`: tfkd opens cuDNN at run time; this exports TFKD_CUDNN_LIB
# as the libcudnn.so.9 that PyTorch's wheels installed, unless it already
# names a file (nothing found: tfkd then searches the library path itself).
find_cudnn() {
  if [ -n "${TFKD_CUDNN_LIB:-}" ]; then return; fi
  TFKD_CUDNN_LIB=$(python3 - <<'PY'
import glob, os, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
try:
    import torch
    dirs.append(os.path.dirname(torch.__file__))
except Exception:
    pass
for d in dirs:
    for pattern in ("nvidia/cudnn/lib/libcudnn.so.9", "lib/libcudnn.so.9"):
        hits = glob.glob(os.path.join(d, pattern))
        if hits:
            print(hits[0])
            raise SystemExit
PY
)
  export TFKD_CUDNN_LIB
}
