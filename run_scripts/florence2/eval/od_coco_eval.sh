#!/usr/bin/env bash
# Single node, NPROC GPUs (default 1): NPROC=4 bash run_scripts/florence2/eval/od_coco_eval.sh [--options ...]
torchrun --standalone --nproc_per_node=${NPROC:-1} evaluate.py --cfg-path projects/florence2/eval/od_coco_eval.yaml "$@"
