#!/usr/bin/env bash
# The 8 DCGMM variants {3, 4 classes} x {scale 2, 1} x {loss ours, paper} on the all80 split,
# all at once on one GPU (one CPU thread each), each capped at MAX_MINUTES of training, into
# $RUNS/stain/dcgmm_all80_k{K}_s{S}_{loss} with a log beside it. Compare them afterwards with
#   nice -n 5 .venv/bin/python bench/dcgmm_split.py --candidates runs/stain/dcgmm_all80_k*_s*_*
# Environment (all optional): RUNS (default runs), MAX_MINUTES (5), STEPS (6000), BATCH (16),
# DEVICE (cuda), PYTHON (.venv/bin/python if present, else python3), NAPARI_HISTO_DATA (data
# root, default ../shared/data; PNG or JPEG tiles), SKIP_EVAL=1 (no whole-image card figures).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-runs}
minutes=${MAX_MINUTES:-5}
steps=${STEPS:-6000}
batch=${BATCH:-16}
device=${DEVICE:-cuda}
if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3; fi
extra=()
[ "${SKIP_EVAL:-0}" = 1 ] && extra+=(--skip-eval)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$runs/stain"
pids=()
names=()
for loss in ours paper; do
  for k in 3 4; do
    for s in 2 1; do
      name="dcgmm_all80_k${k}_s${s}_${loss}"
      if [ -f "$runs/stain/$name/weights.safetensors" ]; then
        echo "skip $name (done)"
        continue
      fi
      "$py" scripts/fit_dcgmm_default.py --sets all80 --classes "$k" --scale "$s" \
        --loss "$loss" --device "$device" --steps "$steps" --batch-size "$batch" \
        --max-minutes "$minutes" --threads 1 --name "$name" --out "$runs/stain/$name" \
        ${extra[@]+"${extra[@]}"} > "$runs/stain/$name.log" 2>&1 &
      pids+=($!)
      names+=("$name")
      echo "started $name (pid $!)"
    done
  done
done
failed=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    echo "ok     ${names[$i]}: $(tail -n 1 "$runs/stain/${names[$i]}.log" | cut -c1-160)"
  else
    echo "FAILED ${names[$i]} (rc $?): see $runs/stain/${names[$i]}.log"
    tail -n 5 "$runs/stain/${names[$i]}.log" || true
    failed=1
  fi
done
exit "$failed"
