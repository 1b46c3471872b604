#!/usr/bin/env bash
# The smaller demo: a small CNN learns to name the left object of the shapes scenes.
NPROC=${NPROC:-1}
if [ "$NPROC" -gt 1 ]; then
  torchrun --standalone --nproc_per_node="$NPROC" train.py --cfg-path projects/demo/shapes_classify.yaml "$@"
else
  python train.py --cfg-path projects/demo/shapes_classify.yaml "$@"
fi
