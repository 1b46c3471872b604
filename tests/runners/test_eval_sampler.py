"""``run.use_dist_eval_sampler: false`` (LAVIS's retrieval setting): every rank evaluates
the whole split. Retrieval must then still score each pair once: on 2 gloo ranks it gives
the single-process rankings and metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.helpers import REPO, only_run_dir, read_log, run_script
from vlft.datasets.synthetic_lavis import write_shapes_lavis


def test_retrieval_with_every_rank_on_the_whole_split_matches_one_process(tmp_path):
    root = tmp_path / "lavis"
    write_shapes_lavis(root, n_train=0, n_val=0, n_test=8, image_size=32)
    project = REPO / "projects" / "blip2" / "eval" / "ret_coco_eval.yaml"
    # one image / four texts / one pair per forward on any number of ranks, so that the
    # random tiny model's near-tied scores are computed bit for bit the same way
    common = ["model.model_type=tiny", "model.load_pretrained=false", "model.load_finetuned=false",
              "model.image_size=32", f"run.cache_root={root}", "run.device=cpu", "run.amp=false", "run.num_workers=0",
              "run.batch_size_eval=1", "run.text_batch_size=4", "run.itm_batch_size=1", "run.k_test=4",
              "datasets.coco_retrieval.vis_processor.eval.image_size=32",
              f"imports=[{Path(__file__).with_name('retrieval_scores_plugin.py')}]"]
    runs = {}
    for name, nproc, extra in (("single", 1, ["run.distributed=false"]),
                               ("whole_split_per_rank", 2, ["run.use_dist_eval_sampler=false"])):
        out = tmp_path / name
        run_script(["evaluate.py", "--cfg-path", str(project), "--options", *common, *extra, f"run.output_dir={out}"],
                   nproc=nproc)
        run_dir = only_run_dir(out)
        metrics = [r for r in read_log(run_dir) if r["kind"].startswith("eval/")][-1]
        ranking, = (run_dir / "result").glob("*.json")
        runs[name] = (metrics, json.loads(ranking.read_text()), np.load(run_dir / "scores.npz"))
    (one, one_rank, one_scores), (two, two_rank, two_scores) = runs["single"], runs["whole_split_per_rank"]
    for matrix in ("score_i2t", "score_t2i"):  # each pair scored once, not once per rank
        assert (one_scores[matrix] > -100).sum() > 0
        np.testing.assert_allclose(two_scores[matrix], one_scores[matrix], rtol=1e-6, atol=1e-6)
    assert two_rank == one_rank
    for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10"):
        assert two[key] == one[key], key
