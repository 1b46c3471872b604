"""Shared fixtures: offline hub and the toy plugin project."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import TOY_RUN

# one intra-op thread, as the subprocesses the tests start get (OMP_NUM_THREADS=1): on a busy
# 2-core machine torch's default threads make the in-process runs several times slower
torch.set_num_threads(1)


@pytest.fixture
def toy_config(tmp_path):
    """Build a validated Config of the toy project with extra ``--options``."""
    from vlft.common.config import Config

    def make(*options: str):
        return Config.from_file(str(TOY_RUN), options=[f"run.output_dir={tmp_path / 'out'}", *options])

    return make


@pytest.fixture
def toy_runner(toy_config):
    """The runner the launcher would build, in this process."""
    import argparse

    from vlft.launch import setup

    def make(*options: str):
        cfg = toy_config(*options)
        args = argparse.Namespace(cfg_path=str(TOY_RUN), options=[f"run.output_dir={cfg.run_cfg.output_dir}", *options], resume=None)
        return setup(args)

    return make
