#!/usr/bin/env bash
# The detection demo (tiny Florence-2 learns <OD> on synthetic shapes; a few minutes on 2 CPU cores).
# It prints COCO mAP before and after training and saves pictures in the run folder.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} python train.py --cfg-path projects/demo/detect_shapes.yaml "$@"
