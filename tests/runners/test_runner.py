"""The real runner end to end on the toy plugin, in this process."""
import logging

import pytest
import torch

from tests.helpers import read_log
from vlft.runners.runner_base import NonFiniteLossError


def evals(run_dir, split="val"):
    return [r for r in read_log(run_dir) if r["kind"] == f"eval/toy_regression/{split}"]


def test_epoch_runner_trains_validates_tests_and_checkpoints(toy_runner):
    runner = toy_runner("run.max_epoch=4")
    result = runner.train()
    run_dir = runner.run_dir
    val = evals(run_dir)
    assert [r["step"] for r in val] == [8, 16, 24, 32]  # 64 samples / batch 8 = 8 steps per epoch
    assert val[-1]["mse"] < val[0]["mse"]
    assert result["test"]["toy_regression/test"]["count"] == 32
    assert (run_dir / "config.yaml").is_file() and (run_dir / "result" / "toy_regression_test_final.json").is_file()
    ckpt = torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)
    assert ckpt["progress"]["step"] == 32 and len(ckpt["rng"]) == 1
    assert "task: toy_regression" in ckpt["config"]  # the merged config travels with the weights
    assert set(ckpt["model"]) == set(runner.model.state_dict())
    best = torch.load(run_dir / "checkpoint_best.pth", weights_only=True)
    assert best["progress"]["best_step"] == min(val, key=lambda r: r["mse"])["step"]


def test_iteration_runner_validates_every_inner_epoch(toy_runner):
    runner = toy_runner("run.runner=runner_iter", "run.max_iters=10", "run.iters_per_inner_epoch=4", "run.test_splits=[]")
    runner.train()
    assert [r["step"] for r in evals(runner.run_dir)] == [4, 8, 10]
    train = [r for r in read_log(runner.run_dir) if r["kind"] == "train"]
    assert train[-1]["step"] == 10


def test_early_stopping_stops_after_patience(toy_runner, caplog):
    # lr 0: the weights never change, so validation never improves after the first one
    runner = toy_runner("run.init_lr=0.0", "run.warmup_steps=0", "run.max_epoch=10", "run.early_stop_patience=2")
    with caplog.at_level(logging.INFO):
        runner.train()
    assert len(evals(runner.run_dir)) == 3
    assert "early stop" in caplog.text
    assert torch.load(runner.run_dir / "checkpoint_latest.pth", weights_only=True)["progress"]["step"] == 24


def test_a_non_finite_loss_skips_its_step_and_training_goes_on(toy_runner, caplog):
    runner = toy_runner("run.nan_at_micro_steps=[3]", "run.max_epoch=1", "run.test_splits=[]")
    with caplog.at_level(logging.WARNING):
        runner.train()
    assert "non-finite loss at step 3: update skipped (1 in a row" in caplog.text
    weights = runner.model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_too_many_non_finite_losses_abort_with_a_saved_checkpoint(toy_runner):
    runner = toy_runner("run.nan_at_micro_steps=[2,3,4]", "run.max_nonfinite_steps=3")
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        runner.train()
    ckpt = torch.load(runner.run_dir / "checkpoint_latest.pth", weights_only=True)
    assert ckpt["progress"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_accumulation_matches_the_larger_batch(toy_runner):
    a = toy_runner("run.batch_size_train=4", "run.accum_grad_iters=2", "run.max_epoch=1", "run.valid_splits=[]", "run.test_splits=[]")
    a.train()
    b = toy_runner("run.batch_size_train=8", "run.accum_grad_iters=1", "run.max_epoch=1", "run.valid_splits=[]", "run.test_splits=[]")
    b.train()
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_run_trains(toy_runner):
    runner = toy_runner("run.amp=bf16", "run.max_epoch=3", "run.test_splits=[]")
    runner.train()
    val = evals(runner.run_dir)
    assert val[-1]["mse"] < val[0]["mse"]


def test_evaluate_reloads_best_weights_and_reproduces_test_metrics(toy_runner):
    trained = toy_runner("run.max_epoch=2")
    result = trained.train()
    best = trained.run_dir / "checkpoint_best.pth"
    evaluator = toy_runner(f"run.resume_ckpt_path={best}")
    metrics = evaluator.evaluate()
    assert metrics["toy_regression/test"]["mse"] == pytest.approx(result["test"]["toy_regression/test"]["mse"], rel=1e-6)


def test_several_datasets_train_together_and_validate_separately(toy_runner):
    runner = toy_runner("datasets.toy_regression_shifted.build_info.seed=5", "run.max_epoch=2", "run.test_splits=[]")
    assert set(runner.datasets) == {"toy_regression", "toy_regression_shifted"}
    runner.train()
    log = read_log(runner.run_dir)
    assert [r["step"] for r in log if r["kind"] == "eval/toy_regression_shifted/val"] == [16, 32]  # 128 samples / 8
    best = torch.load(runner.run_dir / "checkpoint_best.pth", weights_only=True)["progress"]["best_agg"]
    last = [r["agg_metrics"] for r in log if r["kind"].startswith("eval/")][-2:]
    assert best == pytest.approx(max(sum(last) / 2, best))


def test_tensorboard_and_curves_when_asked(toy_runner):
    runner = toy_runner("run.log_backends=[tensorboard]", "run.plot_curves=true", "run.max_epoch=1", "run.test_splits=[]")
    runner.train()
    assert list((runner.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    png = runner.run_dir / "curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_val_freq_counts_epochs_as_lavis_runners_do(toy_runner):
    # runner_base: after epochs 0, N, 2N (0-based); runner_iter: after inner epochs N, 2N (1-based)
    runner = toy_runner("run.max_epoch=5", "run.val_freq=2", "run.test_splits=[]")
    runner.train()
    assert [r["step"] for r in evals(runner.run_dir)] == [8, 24, 40]
    runner = toy_runner("run.runner=runner_iter", "run.max_iters=12", "run.iters_per_inner_epoch=3", "run.val_freq=2",
                        "run.test_splits=[]")
    runner.train()
    assert [r["step"] for r in evals(runner.run_dir)] == [6, 12]


def test_save_freq_keeps_numbered_resumable_snapshots(toy_runner):
    runner = toy_runner("run.max_epoch=4", "run.save_freq=2", "run.test_splits=[]")
    runner.train()
    names = sorted(p.name for p in runner.run_dir.glob("checkpoint_*.pth"))
    assert names == ["checkpoint_0.pth", "checkpoint_2.pth", "checkpoint_best.pth", "checkpoint_latest.pth"]
    snap = torch.load(runner.run_dir / "checkpoint_2.pth", weights_only=True)
    assert snap["progress"]["step"] == 24 and {"strategy", "lr_sched", "rng"} <= set(snap)  # resumable
    runner = toy_runner("run.runner=runner_iter", "run.max_iters=6", "run.iters_per_inner_epoch=2", "run.save_freq=1",
                        "run.valid_splits=[]", "run.test_splits=[]")
    runner.train()
    assert sorted(p.name for p in runner.run_dir.glob("checkpoint_*.pth")) == [
        "checkpoint_2.pth", "checkpoint_4.pth", "checkpoint_6.pth", "checkpoint_latest.pth"]
    default = toy_runner("run.max_epoch=1", "run.test_splits=[]")  # save_freq -1: latest and best only
    default.train()
    assert sorted(p.name for p in default.run_dir.glob("checkpoint_*.pth")) == ["checkpoint_best.pth", "checkpoint_latest.pth"]


@pytest.mark.parametrize("sharded,count", [(True, 16), (False, 32)])
def test_use_dist_eval_sampler_false_gives_every_rank_the_whole_split(toy_runner, monkeypatch, sharded, count):
    from vlft.common import dist

    runner = toy_runner(f"run.use_dist_eval_sampler={str(sharded).lower()}")
    seen = []
    valid_step = runner.task.valid_step
    monkeypatch.setattr(runner.task, "valid_step", lambda model, samples: seen.extend(samples["instance_id"].tolist())
                        or valid_step(model, samples))
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)  # rank 0 of 2 (gathering stays local)
    runner.evaluate(["val"])
    assert sorted(seen) == (list(range(0, 32, 2)) if sharded else list(range(32))) and len(seen) == count


def test_each_batch_says_where_training_is_as_lavis_does(toy_runner):
    # LAVIS's loop adds epoch / iters (micro-batch within the inner epoch) / num_iters_per_epoch
    # to every batch; BLIP's momentum distillation ramps alpha up with them
    runner = toy_runner("run.max_epoch=2", "run.accum_grad_iters=2", "run.valid_splits=[]", "run.test_splits=[]")
    seen = []
    step = runner.task.train_step
    runner.task.train_step = lambda model, samples: (seen.append((samples["epoch"], samples["iters"],
                                                                  samples["num_iters_per_epoch"])), step(model, samples))[1]
    runner.train()
    # 64 samples / batch 8 = 8 micro-batches = 4 steps per epoch
    assert seen == [(e, i, 8) for e in (0, 1) for i in range(8)]
