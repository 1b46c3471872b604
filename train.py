"""Train with one YAML: python train.py --cfg-path projects/demo/shapes_classify.yaml
(also under torchrun --nproc_per_node=N, deepspeed, or srun)."""
import sys

import vlft  # noqa: F401  (registers the built-in models, datasets, tasks, runners)
from vlft.launch import main_train

if __name__ == "__main__":
    sys.exit(main_train())
