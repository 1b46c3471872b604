#!/usr/bin/env bash
# The built-in demo (README, "The two commands"): a tiny BLIP learns to caption synthetic
# two-shape scenes, on one process or on N (gloo on CPU, NCCL on GPUs).
NPROC=${NPROC:-1}
if [ "$NPROC" -gt 1 ]; then
  torchrun --standalone --nproc_per_node="$NPROC" train.py --cfg-path projects/demo/caption_shapes.yaml "$@"
else
  python train.py --cfg-path projects/demo/caption_shapes.yaml "$@"
fi
