#!/usr/bin/env bash
# Single node, NPROC GPUs (default 1): NPROC=4 bash run_scripts/florence2/train/ocr_ft.sh [--options ...]
torchrun --standalone --nproc_per_node=${NPROC:-1} train.py --cfg-path projects/florence2/train/ocr_ft.yaml "$@"
