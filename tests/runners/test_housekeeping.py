"""Housekeeping and safety: stale temporary checkpoints of killed runs are removed at
start, and DeepSpeed's resume state is read with weights_only=True."""
import logging
import os
import subprocess
import sys

import pytest
import torch

from vlft.runners import checkpoint as ckpt_io


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # finished and reaped: no such process (barring reuse within the test)


def test_stale_temp_files_are_removed_and_live_ones_kept(tmp_path, caplog):
    stale = tmp_path / f".checkpoint_latest.pth.tmp-{dead_pid()}"
    stale.write_bytes(b"x" * 2048)
    live = tmp_path / f".checkpoint_best.pth.tmp-{os.getpid()}"  # a write in progress
    live.write_bytes(b"y")
    (tmp_path / "checkpoint_latest.pth.ds").mkdir()
    old = tmp_path / "checkpoint_latest.pth.ds.old"  # atomic_replace_dir's left-over
    old.mkdir()
    (old / "shard.pt").write_bytes(b"z" * 10)
    interrupted = tmp_path / "checkpoint_other.ds.old"  # the new folder never arrived
    interrupted.mkdir()
    with caplog.at_level(logging.INFO):
        removed = ckpt_io.remove_stale_temp_files(tmp_path)
    assert sorted((p.name, n) for p, n in removed) == sorted([(old.name, 10), (stale.name, 2048)])
    assert live.exists() and not stale.exists() and not old.exists()
    assert (tmp_path / "checkpoint_other.ds").is_dir() and not interrupted.exists()
    assert f"removed stale temporary {stale} (2KB)" in caplog.text


def test_training_start_removes_stale_temp_files(toy_runner):
    runner = toy_runner("run.max_epoch=1", "run.test_splits=[]", "run.valid_splits=[]")
    runner.run_dir.mkdir(parents=True)
    stale = runner.run_dir / f".checkpoint_latest.pth.tmp-{dead_pid()}"
    stale.write_bytes(b"torn")
    runner.train()
    assert not stale.exists() and (runner.run_dir / ckpt_io.LATEST).is_file()


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_deepspeed_state_loads_weights_only(tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from vlft.runners.deepspeed_strategy import weights_only_loads

    class Engine:
        checkpoint_engine = TorchCheckpointEngine()

    good, bad = tmp_path / "optim_states.pt", tmp_path / "tampered.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
                                         "fp32": [torch.ones(3)]}}, good)
    torch.save({"optimizer_state_dict": Exploit()}, bad)
    engine = Engine()
    with weights_only_loads(engine):
        state = engine.checkpoint_engine.load(str(good), map_location="cpu")["optimizer_state_dict"]
        assert state["loss_scaler"].cur_scale == 1.0 and state["zero_stage"] == ZeroStageEnum.gradients
        with pytest.raises(RuntimeError, match="cannot load DeepSpeed state .*tampered.pt as weights only"):
            engine.checkpoint_engine.load(str(bad), map_location="cpu")
    assert "load" not in vars(engine.checkpoint_engine)  # DeepSpeed's own method again afterwards
