#!/usr/bin/env bash
# Evaluate a caption demo checkpoint on the test split: run_scripts/demo/eval_shapes.sh path/to/checkpoint_best.pth
CKPT=${1:?usage: $0 path/to/checkpoint_best.pth}
shift
python evaluate.py --cfg-path projects/demo/caption_shapes.yaml --options run.resume_ckpt_path="$CKPT" "$@"
