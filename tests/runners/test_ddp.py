"""Two gloo ranks with batch 4 each train like one process with batch 8."""
import pytest
import torch

from tests.helpers import TOY_RUN, final_weights, only_run_dir, read_log, run_script

COMMON = ["run.max_epoch=2", "run.test_splits=[]", "datasets.toy_regression.build_info.augment_noise=0.1"]


def test_two_rank_torchrun_matches_single_process_with_same_global_batch(tmp_path):
    args = lambda out, batch: ["train.py", "--cfg-path", str(TOY_RUN), "--options", f"run.output_dir={out}",
                               f"run.batch_size_train={batch}", *COMMON]
    run_script(args(tmp_path / "single", 8))
    ddp = run_script(args(tmp_path / "ddp", 4), nproc=2)
    assert "with ddp on 2 process(es)" in ddp.stdout + ddp.stderr

    single_dir, ddp_dir = only_run_dir(tmp_path / "single"), only_run_dir(tmp_path / "ddp")
    one, two = final_weights(single_dir), final_weights(ddp_dir)
    for name in one:  # same maths, different summation order: close, not bit-equal
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-6, msg=name)
    # evaluation gathered both ranks' shards: every validation sample counted once
    val = [r for r in read_log(ddp_dir) if r["kind"] == "eval/toy_regression/val"]
    assert val and all(r["count"] == 32 for r in val)
    single_val = [r["mse"] for r in read_log(single_dir) if r["kind"] == "eval/toy_regression/val"]
    assert [r["mse"] for r in val] == pytest.approx(single_val, rel=1e-5)
