#!/usr/bin/env bash
# Remake every result that depends on the shipped weights, after `default_models.py ship` put new
# ones into snailcompress/weights/ (each output file records its own command, date and model id).
#
#   bash benchmarks/shipped_results.sh            # the held-out table takes most of its time
#   THREADS=2 bash benchmarks/shipped_results.sh  # the held-out table on 2 threads (the README quotes 1)
#   REDO=1 bash benchmarks/shipped_results.sh     # remake even what already names the shipped model
#
# A run stopped part-way (a session ending) is resumed by running it again: a table whose file
# already names the shipped snail-rgb's id was made with these weights and is skipped (the tables
# are written whole at the end, so a stopped step left the old file), and codec_benchmark.py goes on
# from the images it had measured on the same CPU (results/*.partial.jsonl, snailcompress/bench/scripts.py).
# The pictures and the demo are made again each time. Last, check_model_ids.py checks that every
# table made (or skipped) here names the shipped models' ids in its header, and fails if one does not.
# Then copy the new numbers into README.md (Results, the demo output of `snailcompress demo`) and
# add the new model's training to results/experiments/README.md ("How the shipped snail-rgb was
# trained"); nothing here edits prose.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SNAIL=${SNAIL:-.venv/bin/snailcompress}
THREADS=${THREADS:-1}
KODAK=../shared/data/kodak
RGB_ID=$("$PY" -c 'from snailcompress.zoo import load_model; print(load_model("snail-rgb").model_id)')
GRAY_ID=$("$PY" -c 'from snailcompress.zoo import load_model; print(load_model("snail-gray").model_id)')
MADE=()  # every table this script makes, for the check at the end
# made FILE [ID]: note FILE for the check; true (skip its step) where it already names ID (snail-rgb's by default)
made() { MADE+=("$1"); [ "${REDO:-0}" = 0 ] && grep -qs "${2:-$RGB_ID}" "$1" && echo "skipped, made with id ${2:-$RGB_ID}: $1"; }

made results/default_model_heldout.md || "$PY" benchmarks/codec_benchmark.py --heldout --threads "$THREADS" \
    --codecs png,webp,jpegxl-e7,jpegxl-e9,jpeg2000,jpegls --out results/default_model_heldout.md
made results/coding_speed.md || "$PY" benchmarks/coding_speed.py --threads 2 --sizes 32,32x100,256,768,4000 \
    --out results/coding_speed.md
made results/decoder_kernels.md || "$PY" benchmarks/decoder_kernels.py --threads "$THREADS" --out results/decoder_kernels.md
made results/speed_floor.md || "$PY" benchmarks/speed_floor.py --threads 1,2 --out results/speed_floor.md
made results/small_images.md "$GRAY_ID" || "$PY" benchmarks/small_images.py --out results/small_images.md
made results/context_tradeoff.md || "$PY" benchmarks/context_tradeoff.py --threads 2 --layouts 0,2,4,8,2/b2,2/b8,2/b16 --out results/context_tradeoff.md
made results/tiling_with_context.md || "$PY" benchmarks/tiling.py --model snail-rgb --tiles 32,32+2,48+2,64+2,64+4 --images 6 \
    --out results/tiling_with_context.md
made results/kodak-heldout-tiles/summary.md || "$SNAIL" bench --dataset folder --data-dir "$KODAK" --holdout kodim03,kodim07,kodim12,kodim15,kodim20,kodim23 \
    --scales 1 --model snail-rgb --coded-limit 20 --chunk 1536 --out results/kodak-heldout-tiles -q -f
made results/fashion-mnist-snail-gray/summary.md "$GRAY_ID" || "$SNAIL" bench --dataset fashion-mnist --model snail-gray \
    --limit 2000 --coded-limit 20 --chunk 1000 --codecs png,jpegxl-e9 --out results/fashion-mnist-snail-gray -q -f
"$SNAIL" sample --model snail-rgb -n 36 -o results/samples_snail-rgb.png -f
"$SNAIL" sample --model snail-gray -n 36 -o results/samples_snail-gray.png -f
"$SNAIL" demo
# Last: this reports bits only, no times, so the test suite may run beside it.
made results/calibration.md || "$PY" benchmarks/calibration.py --threads 1 --out results/calibration.md
"$PY" benchmarks/check_model_ids.py "${MADE[@]}"
