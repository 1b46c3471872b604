#!/usr/bin/env bash
# Single node, NPROC GPUs (default 8): NPROC=1 bash run_scripts/blip/coco_cap_ft_iter.sh [--options ...]
torchrun --standalone --nproc_per_node=${NPROC:-8} train.py --cfg-path projects/blip/coco_cap_ft_iter.yaml "$@"
