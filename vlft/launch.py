"""The set-up train.py and evaluate.py share: config -> checks -> distributed -> task ->
datasets -> model -> runner. What a user can get wrong is checked before anything heavy
loads (the config, the resume checkpoint, CUDA, Java for the caption metrics) and every
failure is one line on stderr (vlft.common.errors); ``--debug`` or ``VLFT_DEBUG=1``
shows the traceback instead."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import List, Optional

from vlft.common import dist
from vlft.common.config import Config
from vlft.common.errors import UserError, run_cli
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
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure (also VLFT_DEBUG=1)")
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


def check_resume_path(cfg: Config) -> None:
    """A named resume checkpoint must exist: found now, not after the data and model are built."""
    path = cfg.run_cfg.get("resume_ckpt_path")
    if path and path != "auto" and not Path(path).exists():
        near = find_resume(Path(path).parent) if Path(path).parent.is_dir() else None
        hint = f"; the latest checkpoint there is {near}" if near else ""
        raise UserError(f"run.resume_ckpt_path / --resume: no checkpoint at {path}{hint} "
                        "(--resume auto picks the latest under run.output_dir)")


def setup(args: argparse.Namespace, evaluate_only: bool = False):
    """Build the configured runner (nothing is trained yet)."""
    setup_logging()
    options = list(args.options or [])
    if args.resume:
        options.append(f"run.resume_ckpt_path={args.resume}")
    cfg = Config(cfg_path=args.cfg_path, options=options)
    check_resume_path(cfg)
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

    def body() -> int:
        try:
            runner = setup(args, evaluate_only)
            if evaluate_only or runner.run_cfg.evaluate:
                runner.evaluate()
            else:
                runner.train()
            dist.barrier()  # every rank done (rank 0 writes the last files) before the group goes away
        finally:
            dist.destroy()
        return 0

    hint = "" if evaluate_only else "checkpoints are written atomically: --resume auto continues from the last one"
    return run_cli(body, debug=args.debug, interrupted_hint=lambda: hint)


def main_train(argv: Optional[List[str]] = None) -> int:
    return _main(argv, evaluate_only=False)


def main_evaluate(argv: Optional[List[str]] = None) -> int:
    return _main(argv, evaluate_only=True)
