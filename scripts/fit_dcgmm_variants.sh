#!/usr/bin/env bash
# DCGMM variants on the all80 split, one after another, into the gitignored runs/stain/:
# 3 vs 4 classes at half (scale 2) and full (scale 1) resolution. Compare them with
#   nice -n 5 .venv/bin/python bench/dcgmm_split.py
# and ship the best on validation as resources/stain/dcgmm_default (see its card).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-1500}
for v in "3 2" "4 2" "3 1" "4 1"; do
  set -- $v
  name="dcgmm_all80_k$1_s$2"
  [ -f "runs/stain/$name/weights.safetensors" ] && continue
  nice -n 15 .venv/bin/python scripts/fit_dcgmm_default.py --sets all80 --classes "$1" --scale "$2" \
    --steps "$steps" --threads 2 --name "$name" --out "runs/stain/$name" > "runs/stain/$name.log" 2>&1
done
