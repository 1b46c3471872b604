#!/usr/bin/env bash
# The built-in demo, on one process or on N (gloo on CPU, NCCL on GPUs).
NPROC=${NPROC:-1}
if [ "$NPROC" -gt 1 ]; then
  torchrun --standalone --nproc_per_node="$NPROC" train.py --cfg-path projects/demo/shapes_classify.yaml "$@"
else
  python train.py --cfg-path projects/demo/shapes_classify.yaml "$@"
fi
