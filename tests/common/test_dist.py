import os

import torch

from vlft.common import dist


def test_slurm_variables_become_torchrun_variables(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so the values _slurm_env writes are undone afterwards
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu-a,gpu-b")  # no scontrol here: plain host list
    monkeypatch.setenv("PATH", "/nonexistent")
    dist._slurm_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("5", "8", "1")
    assert os.environ["MASTER_ADDR"] == "gpu-a" and os.environ["MASTER_PORT"] == "29500"


def test_single_process_defaults():
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.all_gather_object(3) == [3]
    assert dist.pick_device("cpu") == torch.device("cpu")
    assert bool(dist.all_reduce_any(torch.tensor(True)))
