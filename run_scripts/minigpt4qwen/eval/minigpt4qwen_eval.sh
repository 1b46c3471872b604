#!/usr/bin/env bash
# Single node, NPROC GPUs (default 1): NPROC=4 bash run_scripts/minigpt4qwen/eval/minigpt4qwen_eval.sh [--options model.finetuned=path/to/checkpoint_best.pth]
torchrun --standalone --nproc_per_node=${NPROC:-1} evaluate.py --cfg-path projects/minigpt4qwen/eval/minigpt4qwen_eval.yaml "$@"
