#!/usr/bin/env bash
# The one-call accelerator check (benchmarks/NOTES.md, "First accelerator hour").
# On the bare GPU machine, from the repository root, with .whl/ and
# .devdata/camvid.tar carried:
#   bash benchmarks/device_check.sh            # writes $OUT/device_check.{json,md}
# Installs the carried wheels (only what the machine lacks; no network), then
# runs benchmarks/device_check.py with any extra arguments passed through.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
{
  "$PY" --version
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices())" || true
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" || true
} 2>&1 | tee "$OUT/environment.txt"
if [ -d .whl ]; then
  # --no-deps and only the wheels whose distribution is missing, so the
  # machine's own jax/flax/torch stay as they are.
  missing=()
  for w in .whl/*.whl; do
    dist=$(basename "$w" | cut -d- -f1)
    "$PY" -m pip show "$dist" >/dev/null 2>&1 || missing+=("$w")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    # Into a folder on PYTHONPATH: no root, no PEP 668 "externally managed" refusal.
    "$PY" -m pip install --no-index --no-deps --quiet --target .pydeps "${missing[@]}" 2>&1 \
      | tail -5 | tee -a "$OUT/environment.txt"
    export PYTHONPATH="$PWD/.pydeps${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed: ${missing[*]}" >> "$OUT/environment.txt"
  fi
fi
exec "$PY" benchmarks/device_check.py --out="$OUT" "$@"
