#!/usr/bin/env bash
# Single node, NPROC GPUs (default 8): NPROC=1 bash run_scripts/blip/train/aokvqa_ft.sh [--options ...]
torchrun --standalone --nproc_per_node=${NPROC:-8} train.py --cfg-path projects/blip/train/aokvqa_ft.yaml "$@"
