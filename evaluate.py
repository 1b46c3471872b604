"""Evaluate with the same YAML and set-up as train.py: python evaluate.py --cfg-path X
[--options run.resume_ckpt_path=path/to/checkpoint_best.pth]."""
import sys

import vlft  # noqa: F401  (registers the built-in models, datasets, tasks, runners)
from vlft.launch import main_evaluate

if __name__ == "__main__":
    sys.exit(main_evaluate())
