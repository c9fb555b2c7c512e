#!/usr/bin/env bash
# Ship a trained and evaluated segmentation model from runs/seg/NAME as the new default, and
# measure what the README and bench/results/seg.md report for it (11-30 minutes on 2 CPU cores):
#   bash scripts/ship_default.sh hovernet_shared_v6
# Run after `scripts/train_seg_default.py ... --name NAME` and `--eval-only --name NAME` (which
# writes the validation figures into the card; its --inference JSON first sets post-processing,
# e.g. a HoVer-Net width chosen with bench/scale_guess.py --hv-sigma). A weight average
# (scripts/average_seg_models.py) is shipped the same way. The previous default is retired
# (registry.json records what superseded it; its folder is deleted: `git rm` it). Afterwards, by
# hand: the README table, a seg.md section, the tests' measured comments (and the test naming
# the newest successor of retired models), the screenshots (scripts/readme_screenshots.py,
# tests/widgets/journey_scenario.py) and the full suite. runs/ does not always survive between
# sessions: ship in the same one.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:?usage: ship_default.sh NAME (a folder in runs/seg)}
[ -f "runs/seg/$M/card.json" ] || { echo "no runs/seg/$M/card.json: train it first" >&2; exit 2; }
py() { OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src nice -n 5 .venv/bin/python "$@"; }

py scripts/train_seg_default.py --ship-trained "$M"
py scripts/train_seg_default.py --make-default "$M" --retire-previous
# Its own magnification calibration (training tiles only), then every validation figure.
py bench/scale_guess.py --model "$M" --grid "bench/results/scale_guess_grid_$M.json" \
  --json "bench/results/scale_guess_$M.json" --write
py bench/seg_accuracy.py --tta --no-tta-arch maskrcnn fullnet --only "$M" --merge
py bench/seg_20x_mpp.py --models "$M" --json "bench/results/seg_20x_mpp_$M.json" --write-card
py bench/seg_speed.py --size 1000 --repeats 3 --no-tta
py bench/scale_guess_real.py --models "$M" --json bench/results/scale_guess_real.json --merge
echo "shipped $M as the default; now the by-hand steps at the top of this script"
