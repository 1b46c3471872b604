"""The set-up train.py and evaluate.py share: config -> distributed -> task ->
datasets -> model -> runner. Config errors stop here with a one-line message."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

from vlft.common import dist
from vlft.common.config import Config, ConfigError
from vlft.common.download import DownloadError
from vlft.common.logger import setup_logging
from vlft.common.registry import registry
from vlft.common.utils import set_seed
from vlft.runners.checkpoint import LATEST, find_resume

logger = logging.getLogger("vlft")


def parse_args(argv: Optional[List[str]] = None, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="project YAML")
    parser.add_argument("--options", nargs="+", default=[], help="overrides, e.g. run.init_lr=1e-5 model.model_type=tiny")
    parser.add_argument("--resume", default=None, help="'auto' (latest checkpoint in run.output_dir) or a checkpoint path")
    # the deepspeed launcher passes --local_rank; torchrun uses LOCAL_RANK
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def new_job_id(output_dir: str) -> str:
    """A timestamp, made unique within ``output_dir`` (runs started in the same second)."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    job_id, n = stamp, 0
    while (Path(output_dir) / job_id).exists():
        n += 1
        job_id = f"{stamp}_{n}"
    return job_id


def run_dir_for(cfg: Config, job_id: str, evaluate_only: bool = False) -> Path:
    """Resuming training continues in the resumed run's folder; anything else (including
    evaluating a checkpoint) gets a new output_dir/<job_id>."""
    resume = cfg.run_cfg.get("resume_ckpt_path")
    if evaluate_only or cfg.run_cfg.evaluate:
        return Path(cfg.run_cfg.output_dir) / job_id
    if resume == "auto":
        found = find_resume(cfg.run_cfg.output_dir)
        if found is not None:
            return found.parent
    elif resume and Path(resume).name == LATEST:
        return Path(resume).parent
    return Path(cfg.run_cfg.output_dir) / job_id


def setup(args: argparse.Namespace, evaluate_only: bool = False):
    """Build the configured runner (nothing is trained yet)."""
    setup_logging()
    options = list(args.options or [])
    if args.resume:
        options.append(f"run.resume_ckpt_path={args.resume}")
    cfg = Config(cfg_path=args.cfg_path, options=options)
    dist.init_distributed(cfg.run_cfg)
    job_id = dist.broadcast_object(new_job_id(cfg.run_cfg.output_dir) if dist.is_main_process() else None)
    task = registry.get_task_class(cfg.run_cfg.task).setup_task(cfg)
    datasets = task.build_datasets(cfg)
    set_seed(cfg.run_cfg.seed)  # the same seed on every rank: freshly initialised weights agree
    model = task.build_model(cfg)
    set_seed(cfg.run_cfg.seed + dist.get_rank())  # then each rank its own random stream
    runner_cls = registry.get_runner_class(cfg.run_cfg.runner)
    return runner_cls(cfg, task, model, datasets, job_id=job_id, run_dir=run_dir_for(cfg, job_id, evaluate_only))


def _main(argv: Optional[List[str]], evaluate_only: bool) -> int:
    args = parse_args(argv, "Evaluate a vlft model" if evaluate_only else "Train a vlft model")
    try:
        runner = setup(args, evaluate_only)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, DownloadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if evaluate_only or runner.run_cfg.evaluate:
            runner.evaluate()
        else:
            runner.train()
    finally:
        dist.destroy()
    return 0


def main_train(argv: Optional[List[str]] = None) -> int:
    return _main(argv, evaluate_only=False)


def main_evaluate(argv: Optional[List[str]] = None) -> int:
    return _main(argv, evaluate_only=True)
