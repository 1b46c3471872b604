#!/usr/bin/env bash
# Single node, NPROC GPUs (default 1; the reference trains on one 24 GB card): NPROC=4 bash run_scripts/minigpt4qwen/train/minigpt4qwen.sh [--options ...]
torchrun --standalone --nproc_per_node=${NPROC:-1} train.py --cfg-path projects/minigpt4qwen/train/minigpt4qwen.yaml "$@"
