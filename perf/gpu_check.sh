#!/usr/bin/env bash
# The one prepared command for a lent GPU machine (issue 15): install what the bare machine lacks
# (no network there), then `python -m perf gpu-check`, which runs the CUDA tests and the cuda
# benchmark steps under one deadline and writes rows + a summary into the output folder.
#
#   bash perf/gpu_check.sh [OUT_DIR] [gpu-check options]     # OUT_DIR defaults to $OUT, then gpu-out
#   bash perf/gpu_check.sh /tmp/dry --device cpu --dry-run   # the CPU dry run (1-3 minutes)
#   PERF_COMMIT=$(git rev-parse --short=10 HEAD) ...         # the commit the rows name, where the
#                                                            # copied tree has no .git
#
# The deel-torchlip wheel travels in git (perf/wheels/, 61 KB, pure Python; refresh it with
# `pip download deel-torchlip==1.0.5 --no-deps --only-binary=:all: -d perf/wheels`).
# Whole command: at most 8 minutes (installs ~20 s, the Python part stops itself at --total-s 450).
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out="$1"; shift; fi
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "perf/gpu_check.sh: $py cannot import torch; set PYTHON to the interpreter that has it" >&2
  exit 2
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1
  "$py" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  if ! "$py" -c "import deel.torchlip" 2>/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-cache-dir perf/wheels/deel_torchlip-1.0.5-py3-none-any.whl \
      || echo "WARNING: the deel-torchlip wheel did not install: its providers will be skipped"
  fi
  if ! "$py" -c "import liptriton.kernels" 2>/dev/null; then
    # no network: the machine's own setuptools builds it (pyproject's `license = "MIT"` needs
    # setuptools >= 77); if it cannot, run from the source tree, where liptriton.kernels is the
    # top-level kernels/ folder (pyproject's package-dir), through a link
    if ! "$py" -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e .; then
      echo "WARNING: pip install -e . failed: running from the source tree (link liptriton/kernels -> ../kernels)"
      [ -e liptriton/kernels ] || ln -s ../kernels liptriton/kernels
    fi
  fi
  "$py" -m pip list 2>/dev/null | grep -i -E "^(torch|triton|deel-torchlip|liptriton|pytest|pytest-xdist|pytest-timeout) "
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
exec timeout -k 10 470 "$py" -m perf gpu-check --out "$out" "$@"
