#!/usr/bin/env bash
# Reproduces every number of the foundation issue in README.md (reports/foundation.md).
# Resumable: finished runs are skipped. Needs the venv (`make install`) and DYNAFUSE_DATA or ../shared/datasets.
# On 2 CPU cores it takes about 40 minutes, most of it the MOSEI text encoding and training.
set -euo pipefail
cd "$(dirname "$0")/.."
export DYNAFUSE_DATA="${DYNAFUSE_DATA:-$(cd .. && pwd)/shared/datasets}"
DF=.venv/bin/dynafuse
OUT=${OUT:-runs/foundation}
SEEDS=${SEEDS:-"0 1 2"}

train() {  # dataset model seed [overrides...]; skip a run that has finished
  local ds=$1 model=$2 seed=$3; shift 3
  local dir="$OUT/$ds/$model${TAG:-}-s$seed"
  if [ -f "$dir/metrics.json" ]; then return; fi
  local resume=""; [ -d "$dir/checkpoints" ] && resume="--resume"
  $DF train --model "$model" --dataset "$ds" --seed "$seed" --out "$dir" $resume train.progress=false "$@" >/dev/null
  echo "done $dir"
}

for seed in $SEEDS; do
  for model in unimodal_text early_fusion late_fusion attention_fusion; do
    train mosi "$model" "$seed"                  # official split: text + audio
    train mosi-bclstm "$model" "$seed"           # speaker-independent split: text + audio + vision
  done
  TAG=-3class train mosei unimodal_text "$seed" model.task=3class
done
$DF summarize "$OUT" --out reports/foundation
