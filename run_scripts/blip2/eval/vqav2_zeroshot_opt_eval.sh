#!/usr/bin/env bash
# Single node, NPROC GPUs (default 8): NPROC=1 bash run_scripts/blip2/eval/vqav2_zeroshot_opt_eval.sh [--options ...]
torchrun --standalone --nproc_per_node=${NPROC:-8} evaluate.py --cfg-path projects/blip2/eval/vqav2_zeroshot_opt_eval.yaml "$@"
