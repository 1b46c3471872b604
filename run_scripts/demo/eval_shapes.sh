#!/usr/bin/env bash
# Evaluate a demo checkpoint on the test split: run_scripts/demo/eval_shapes.sh path/to/checkpoint_best.pth
CKPT=${1:?usage: $0 path/to/checkpoint_best.pth}
python evaluate.py --cfg-path projects/demo/shapes_classify.yaml --options run.resume_ckpt_path="$CKPT"
