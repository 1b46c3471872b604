"""Test plugin (loaded through ``imports:``): the retrieval task also saves its full
score matrices as ``scores.npz`` in the run folder, so runs can be compared value by value
(the saved results hold only the top-10 rankings)."""
from pathlib import Path

import numpy as np

from vlft.tasks.retrieval import RetrievalTask

_after_evaluation = RetrievalTask.after_evaluation


def _save_scores(self, results, split_name, epoch, output_dir=None, dataset=None):
    if output_dir is not None:
        np.savez(Path(output_dir) / "scores.npz", **results[0])
    return _after_evaluation(self, results, split_name, epoch, output_dir=output_dir, dataset=dataset)


RetrievalTask.after_evaluation = _save_scores
