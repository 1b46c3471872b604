#!/usr/bin/env bash
# Single node, NPROC GPUs (default 8): NPROC=1 bash run_scripts/blip2/eval/caption_coco_opt2.7b_eval.sh [--options ...]
torchrun --standalone --nproc_per_node=${NPROC:-8} evaluate.py --cfg-path projects/blip2/eval/caption_coco_opt2.7b_eval.yaml "$@"
