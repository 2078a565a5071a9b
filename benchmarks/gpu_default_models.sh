#!/usr/bin/env bash
# Trains the candidate default models side by side on one GPU (what ran on the lent H100).
#   bash benchmarks/gpu_default_models.sh DATA_DIR RUNS_DIR TOTAL_MINUTES
# Running it again with a larger TOTAL_MINUTES resumes every run from its last checkpoint.
set -euo pipefail
data=$1 runs=$2 minutes=$3
holdout=kodim03,kodim07,kodim12,kodim15,kodim20,kodim23
common=(--dataset folder --data-dir "$data" --holdout "$holdout" --batch-size 64 --workers 3
        --eval-every 2000 --eval-images 512 --minutes "$minutes")
mkdir -p "$runs"
run() {  # NAME CHANNELS MODEL-SETTINGS...
  local name=$1 channels=$2; shift 2
  python -m snailcompress.cli train --model pixelsnail-small --channels "$channels" "$@" "${common[@]}" \
    --out "$runs/$name" > "$runs/$name.log" 2>&1 &
}
run rgb-s 3 --set filters=48 --set blocks=2 --set resnets_per_block=3 --set value_channels=24
run rgb-m 3
run rgb-l 3 --set filters=96 --set resnets_per_block=3 --set value_channels=48
run gray-m 1
wait
tail -n 3 "$runs"/*.log
