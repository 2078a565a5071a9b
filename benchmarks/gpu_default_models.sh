#!/usr/bin/env bash
# Trains candidate default models side by side on one GPU (what ran on the lent H100).
#   bash benchmarks/gpu_default_models.sh DATA_DIR RUNS_DIR TOTAL_MINUTES NAME... [-- EXTRA TRAIN OPTIONS]
# NAME is one of rgb-s, rgb-m, rgb-l, gray-m (from scratch) or rgb-s-more, gray-m-more (going on from
# the shipped snail-rgb / snail-gray, when the runs that made them are gone). Running it again with a
# larger TOTAL_MINUTES resumes each run from its last checkpoint (options after -- apply to every
# run, e.g. -- --ema 0.999). The runs use bf16 on CUDA (`--precision auto`); for a late cycle of small
# steps from a well-trained model add -- --precision fp32: on the CPU, bf16 made such a cycle 0.59%
# worse where fp32 gained 0.04% (results/experiments/default_models/bf16_training.md).
set -euo pipefail
data=$1 runs=$2 minutes=$3; shift 3
names=(); while [[ $# -gt 0 && $1 != -- ]]; do names+=("$1"); shift; done; [[ $# -gt 0 ]] && shift
extra=("$@")
holdout=kodim03,kodim07,kodim12,kodim15,kodim20,kodim23
declare -A settings=(
  [rgb-s]="--model pixelsnail-small --channels 3 --set filters=48 --set blocks=2 --set resnets_per_block=3 --set value_channels=24"
  [rgb-m]="--model pixelsnail-small --channels 3"
  [rgb-l]="--model pixelsnail-small --channels 3 --set filters=96 --set resnets_per_block=3 --set value_channels=48"
  [gray-m]="--model pixelsnail-small --channels 1"
  [rgb-s-more]="--model snail-rgb --channels 3 --warmup-steps 500"
  [gray-m-more]="--model snail-gray --channels 1 --warmup-steps 500"
)
mkdir -p "$runs"
for name in "${names[@]}"; do
  # shellcheck disable=SC2086
  python -m snailcompress.cli train ${settings[$name]} --dataset folder --data-dir "$data" \
    --holdout "$holdout" --batch-size 64 --workers 3 --eval-every 2000 --eval-images 512 --minutes "$minutes" \
    "${extra[@]}" --out "$runs/$name" > "$runs/$name.log" 2>&1 &
done
wait
