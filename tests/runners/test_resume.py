"""kill -9 in the middle of training, resume, and end bit-identical to a run that was
never interrupted (CPU, same seed): both runners, accumulation, workers, 2 gloo ranks."""
import pytest
import torch

from tests.helpers import TOY_RUN, final_weights, only_run_dir, run_script

# dropout and data augmentation on, so the RNG streams matter
COMMON = ["model.dropout=0.1", "datasets.toy_regression.build_info.augment_noise=0.1",
          "run.checkpoint_every_iters=5", "run.test_splits=[]", "run.log_freq=100"]

CASES = {
    # 16 micro-batches per epoch, 8 steps; checkpoints at 5, 8, 10; killed in step 14
    "epoch_accum_workers": (1, ["run.accum_grad_iters=2", "run.batch_size_train=4", "run.max_epoch=3", "run.num_workers=2"], 27),
    # 8 micro-batches per pass; validation at 6, 12; checkpoints at 5, 6, 10; killed in step 11 (mid-pass)
    "iter": (1, ["run.runner=runner_iter", "run.max_iters=20", "run.iters_per_inner_epoch=6"], 11),
    # per rank: 8 micro-batches per epoch, 4 steps; checkpoints at 4, 5, 8; killed in step 8
    "ddp_2_ranks_accum": (2, ["run.accum_grad_iters=2", "run.batch_size_train=4", "run.max_epoch=3"], 15),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kill_9_then_resume_is_bit_identical(tmp_path, case):
    nproc, options, kill_at = CASES[case]
    args = lambda out, *extra: ["train.py", "--cfg-path", str(TOY_RUN), "--options", f"run.output_dir={out}", *COMMON, *options, *extra]

    run_script(args(tmp_path / "straight"), nproc=nproc)
    killed = run_script(args(tmp_path / "resumed", f"run.kill_at_micro_step={kill_at}"), nproc=nproc, expect_ok=False)
    assert killed.returncode != 0, "the run was meant to die"
    resumed = run_script(args(tmp_path / "resumed") + ["--resume", "auto"], nproc=nproc)
    assert "resumed from" in resumed.stdout + resumed.stderr

    straight = final_weights(only_run_dir(tmp_path / "straight"))
    again = final_weights(only_run_dir(tmp_path / "resumed"))
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), f"{name} differs after resume"
