#!/usr/bin/env bash
# DeepSpeed on one node, NPROC GPUs (default 4, as the reference's 4x RTX 3090): NPROC=8 bash run_scripts/minigpt4qwen/train/minigpt4qwen_full_llm.sh [--options ...]
# (the same under DeepSpeed's launcher: deepspeed --num_gpus $NPROC train.py --cfg-path ...)
torchrun --standalone --nproc_per_node=${NPROC:-4} train.py --cfg-path projects/minigpt4qwen/train/minigpt4qwen_full_llm.yaml "$@"
