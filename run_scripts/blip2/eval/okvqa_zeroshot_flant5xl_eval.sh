#!/usr/bin/env bash
# NPROC GPUs (default 8); pass --options run.resume_ckpt_path=... to evaluate your own checkpoint
torchrun --standalone --nproc_per_node=${NPROC:-8} evaluate.py --cfg-path projects/blip2/eval/okvqa_zeroshot_flant5xl_eval.yaml "$@"
