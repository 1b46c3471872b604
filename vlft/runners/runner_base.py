"""The runner: one training core for epoch- and iteration-based schedules.

The loop counts optimizer steps. A schedule (``schedule()``, the only thing the
iteration runner changes) says how many steps there are, how many make an *inner
epoch* (between validations and checkpoints) and how many micro-batches make one
pass over the data. Side effects live in small methods around the loop: validation,
best-checkpoint choice, early stopping, checkpoints, logging.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from vlft.common import dist
from vlft.common.curves import plot_curves
from vlft.common.debug_log import attach_debug_log
from vlft.common.logger import MetricSinks, ProgressLogger
from vlft.common.registry import registry
from vlft.common.utils import rng_state, set_rng_state
from vlft.runners import checkpoint as ckpt_io
from vlft.common.threads import apply_num_threads
from vlft.runners.data import MicroBatchStream, concat
from vlft.runners.evaluation import move_to_device, run_evaluation, skip_summary, summed_over_ranks
from vlft.models.adapters import UnfreezeSchedule, export
from vlft.runners.optim import build_optimizer
from vlft.runners.strategies import build_strategy
from vlft.runners.zero_weights import gathered

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands; saved in every resumable checkpoint."""

    step: int = 0  # optimizer steps done
    best_agg: Optional[float] = None
    best_step: Optional[int] = None
    bad_evals: int = 0  # validations since the last improvement (early stopping)
    nonfinite_in_a_row: int = 0


class NonFiniteLossError(FloatingPointError):
    pass


@registry.register_runner("runner_base")
class RunnerBase:
    """Epoch-based training: an inner epoch is one pass over the training data."""

    def __init__(self, cfg, task, model, datasets: Dict[str, Dict[str, Any]], job_id: Optional[str] = None,
                 run_dir: Optional[Path] = None):
        self.config, self.run_cfg = cfg, cfg.run_cfg
        self.task, self.datasets, self.model = task, datasets, model
        self.device = dist.pick_device(self.run_cfg.device)
        self.run_dir = Path(run_dir or Path(self.run_cfg.output_dir) / (job_id or time.strftime("%Y%m%d%H%M%S")))
        self.progress = Progress()
        self.strategy = None
        self.sinks: Optional[MetricSinks] = None
        self.start_metrics: Optional[Dict[str, Dict[str, float]]] = None
        self.skip_totals: Dict[str, Tuple[int, int]] = {}  # split -> (unreadable, seen), summed over ranks
        self.eval_loaders: Dict[str, Any] = {}  # split -> its evaluation DataLoader (persistent workers)
        apply_num_threads(self.run_cfg)

    # ------------------------------------------------------------------ schedule
    def schedule(self, batches_per_pass: int) -> Tuple[int, int, int]:
        """(total steps, steps per inner epoch, micro-batches per data pass)."""
        accum = self.run_cfg.accum_grad_iters
        steps_per_epoch = batches_per_pass // accum
        if steps_per_epoch == 0:
            raise ValueError(f"one epoch holds {batches_per_pass} batches per process, fewer than accum_grad_iters={accum}")
        if batches_per_pass % accum:
            logger.warning("%d trailing batch(es) per epoch do not fill an accumulation window and are skipped",
                           batches_per_pass % accum)
        return self.run_cfg.max_epoch * steps_per_epoch, steps_per_epoch, steps_per_epoch * accum

    # ------------------------------------------------------------------ entry points
    def train(self) -> Dict[str, Any]:
        """Train, validate after each inner epoch, then test with the best weights."""
        self._setup_training()
        steps_per_inner = self.steps_per_inner
        n_inner = math.ceil(self.total_steps / steps_per_inner)
        logger.info("training %d steps (%d per inner epoch) with %s on %d process(es); run folder %s",
                    self.total_steps, steps_per_inner, self.strategy.name, dist.get_world_size(), self.run_dir)
        if self.run_cfg.validate_at_start and self.progress.step == 0 and self.run_cfg.valid_splits:
            self.start_metrics = self.run_evaluation(list(self.run_cfg.valid_splits), tag="val (untrained)", epoch="start")
        for inner in range(self.progress.step // steps_per_inner, n_inner):
            if self.unfreeze.apply(inner):
                self.strategy.refresh()
            self.train_inner_epoch(inner, end=min((inner + 1) * steps_per_inner, self.total_steps))
            if self.after_inner_epoch(inner):
                break
        results = self._finish()
        return results

    def evaluate(self, splits: Optional[List[str]] = None, ckpt_path: Optional[str] = None) -> Dict[str, Any]:
        """Evaluate ``splits`` (default: test_splits, else valid_splits) with the configured
        weights or ``ckpt_path`` (or run.resume_ckpt_path)."""
        self._open_run_dir()
        self.model.to(self.device)
        ckpt_path = ckpt_path or self.run_cfg.get("resume_ckpt_path")
        if ckpt_path:
            ckpt_io.load_model_weights(self.model, ckpt_path)
            logger.info("evaluating weights from %s", ckpt_path)
        splits = splits or list(self.run_cfg.test_splits) or list(self.run_cfg.valid_splits)
        if not splits:
            raise ValueError("nothing to evaluate: set run.test_splits or run.valid_splits")
        metrics = self.run_evaluation(splits, tag="test")
        self._log_skipped()
        self.sinks.close()
        return metrics

    # ------------------------------------------------------------------ set-up
    def _open_run_dir(self) -> None:
        if self.sinks is not None:
            return
        if dist.is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.run_dir / "config.yaml")
        dist.barrier()
        rank = dist.get_rank()
        attach_debug_log(self.run_dir / ("debug.log" if rank == 0 else f"debug.rank{rank}.log"))
        self.sinks = MetricSinks(self.run_dir, self.run_cfg.log_backends, self.run_cfg.wandb_project,
                                 config=self.config.to_dict())

    def train_dataset(self):
        parts = [splits[s] for splits in self.datasets.values() for s in self.run_cfg.train_splits if s in splits]
        if not parts:
            raise ValueError(f"no dataset has a split named in run.train_splits={list(self.run_cfg.train_splits)}")
        ratios = self.run_cfg.get("train_dataset_ratios")
        if ratios:  # several datasets mixed by ratio, seeded and resumable (vlft/runners/mixing.py)
            from vlft.runners.mixing import RatioMix

            named = {name: concat([splits[s] for s in self.run_cfg.train_splits if s in splits])
                     for name, splits in self.datasets.items() if any(s in splits for s in self.run_cfg.train_splits)}
            mix = RatioMix(named, dict(ratios), seed=self.run_cfg.seed)
            logger.info("training datasets mixed by ratio: %s items per pass", dict(zip(mix.names, mix.counts)))
            return mix
        return concat(parts)

    def _setup_training(self) -> None:
        self._open_run_dir()
        run = self.run_cfg
        if dist.is_main_process():  # what a killed run left half-written
            ckpt_io.remove_stale_temp_files(self.run_dir)
        self.stream = MicroBatchStream(self.train_dataset(), run.batch_size_train, run.num_workers,
                                       dist.get_rank(), dist.get_world_size(), run.seed,
                                       max_bad_fraction=run.max_bad_sample_fraction)
        self.total_steps, self.steps_per_inner, self.stream.micro_per_pass = self.schedule(self.stream.batches_per_pass)
        resume = self._resume_path()
        resume_state = ckpt_io.read(resume) if resume else None
        if resume_state is not None:  # weights first, so a DeepSpeed engine starts from them
            ckpt_io.load_model_weights(self.model, resume_state["model"])
        self.model.to(self.device)
        self.unfreeze = UnfreezeSchedule(self.model, self.config.model_cfg.get("unfreeze") or [])
        if resume_state is not None:  # what was unfrozen before the interruption is trainable again
            self.unfreeze.apply(resume_state["progress"]["step"] // self.steps_per_inner)
        optimizer = build_optimizer(self.model, run, include=self.unfreeze.param_names())
        sched_cls = registry.get_lr_scheduler_class(run.lr_sched)
        self.lr_sched = sched_cls.from_config(optimizer, run, self.total_steps, self.steps_per_inner)
        self.strategy = build_strategy(run, self.device)
        if self.unfreeze and self.strategy.name == "deepspeed":
            raise ValueError("model.unfreeze (progressive unfreezing) is not supported with DeepSpeed")
        self.strategy.prepare(self.model, optimizer)
        n_all = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info("model %s: %s parameters, %s trainable (%.2f%%)", type(self.model).__name__, f"{n_all:,}",
                    f"{n_train:,}", 100 * n_train / max(n_all, 1))
        self.progress_log = ProgressLogger(self.total_steps, run.log_freq, self.sinks, self.device,
                                           skipped=lambda: self.stream.skips.skipped)
        if resume_state is not None:
            self._restore(resume_state, resume)

    def _resume_path(self) -> Optional[Path]:
        path = self.run_cfg.get("resume_ckpt_path")
        if not path:
            return None
        if path == "auto":
            found = ckpt_io.find_resume(self.run_dir) or ckpt_io.find_resume(self.run_cfg.output_dir)
            if found is None:
                logger.info("resume auto: no checkpoint under %s, starting fresh", self.run_cfg.output_dir)
            return found
        return Path(path)

    def _restore(self, state: Dict[str, Any], path: Path) -> None:
        self.strategy.load_state_dict(state["strategy"])
        self.strategy.load_extra(path)
        self.lr_sched.load_state_dict(state["lr_sched"])
        self.progress = Progress(**state["progress"])
        rngs = state["rng"]
        if len(rngs) == dist.get_world_size():
            set_rng_state(rngs[dist.get_rank()])
        else:
            logger.warning("checkpoint was written by %d process(es), this run has %d: RNG streams restart, "
                           "so the continuation is not bit-identical", len(rngs), dist.get_world_size())
        logger.info("resumed from %s at step %d", path, self.progress.step)
        dropped = self.sinks.truncate_after(self.progress.step)  # the steps about to be replayed
        if dropped:
            logger.info("log.jsonl: %d record(s) after step %d removed (they are trained again)", dropped, self.progress.step)

    # ------------------------------------------------------------------ the loop
    def train_inner_epoch(self, inner: int, end: int) -> None:
        run, strategy, accum = self.run_cfg, self.strategy, self.run_cfg.accum_grad_iters
        every = int(run.checkpoint_every_iters)  # read once: an OmegaConf read costs ~7 us a step
        strategy.model.train()
        batches = self.stream.iterate(self.progress.step * accum)
        while self.progress.step < end:
            step = self.progress.step
            lr = self.lr_sched.step(step)
            t0 = time.time()
            data_time, losses = 0.0, {}
            for micro in range(accum):
                t_data = time.time()
                samples = move_to_device(next(batches), self.device)
                data_time += time.time() - t_data
                if isinstance(samples, dict):  # where training is, as LAVIS's loop tells its models
                    # (BLIP's momentum distillation ramps alpha up over the first two epochs)
                    samples.update(epoch=inner, num_iters_per_epoch=self.steps_per_inner * accum,
                                   iters=(step - inner * self.steps_per_inner) * accum + micro)
                strategy.sync_gradients(last_micro_step=micro == accum - 1)
                with strategy.autocast():
                    out = self.task.train_step(strategy.model, samples)
                strategy.backward(out["loss"])
                for k, v in out.items():
                    if k.startswith("loss") and torch.is_tensor(v):
                        v = v.detach() if accum == 1 else v.detach().float() / accum
                        losses[k] = losses[k] + v if k in losses else v
            stepped = strategy.step()
            self.progress.step = step + 1
            self._count_nonfinite(stepped, step)
            self.progress_log.update(step, losses, lr, time.time() - t0, data_time)
            if every and self.progress.step % every == 0 and self.progress.step < end:
                self.save_resumable()

    def _count_nonfinite(self, stepped: bool, step: int) -> None:
        if stepped:
            self.progress.nonfinite_in_a_row = 0
            return
        self.progress.nonfinite_in_a_row += 1
        limit = self.run_cfg.max_nonfinite_steps
        logger.warning("non-finite loss at step %d: update skipped (%d in a row, limit %d)",
                       step + 1, self.progress.nonfinite_in_a_row, limit)
        if self.progress.nonfinite_in_a_row >= limit:
            path = self.save_resumable()
            raise NonFiniteLossError(
                f"{limit} consecutive steps had a non-finite loss (last at step {step + 1}); training stopped. "
                f"The weights are those before the first bad step, saved in {path}. Lower run.init_lr, set "
                "run.max_grad_norm, or try amp: bf16 instead of fp16, then resume with --resume auto."
            )

    # ------------------------------------------------------------------ between inner epochs
    def after_inner_epoch(self, inner: int) -> bool:
        """Validate, keep the best weights, write the resumable checkpoint; True to stop early."""
        if self.run_cfg.valid_splits and self.validates_after(inner):
            metrics = self.run_evaluation(list(self.run_cfg.valid_splits), tag="val", epoch=inner)
            aggs = [m["agg_metrics"] for m in metrics.values() if "agg_metrics" in m]
            agg = sum(aggs) / len(aggs) if aggs else None
            p = self.progress
            if agg is not None and (p.best_agg is None or agg > p.best_agg):
                p.best_agg, p.best_step, p.bad_evals = agg, p.step, 0
                self.save_best()
                logger.info("new best agg_metrics %.4f at step %d", agg, p.step)
            elif agg is not None:
                p.bad_evals += 1
        self.save_resumable()
        snapshot = self.snapshot_name(inner)
        if snapshot:  # a numbered copy that later epochs do not overwrite
            self.save_resumable(self.run_dir / snapshot)
        patience = self.run_cfg.early_stop_patience
        if patience and self.progress.bad_evals >= patience:
            logger.info("early stop: no improvement in %d validations (best %.4f at step %s)",
                        patience, self.progress.best_agg, self.progress.best_step)
            return True
        return False

    def validates_after(self, inner: int) -> bool:
        """``run.val_freq`` as LAVIS's runner_base reads it: after epochs 0, N, 2N, ... (0-based)."""
        return inner % self.run_cfg.get("val_freq", 1) == 0

    def snapshot_name(self, inner: int) -> Optional[str]:
        """``run.save_freq`` as LAVIS's runner_base: ``checkpoint_<epoch>.pth`` after epochs
        0, N, 2N, ...; None when no snapshot is due (``save_freq`` <= 0: none at all)."""
        freq = self.run_cfg.get("save_freq", -1)
        return f"checkpoint_{inner}.pth" if freq > 0 and inner % freq == 0 else None

    def run_evaluation(self, splits: List[str], tag: str, epoch: Any = None) -> Dict[str, Dict[str, float]]:
        """Evaluate every dataset that has one of ``splits``; metrics keyed ``dataset/split``
        (vlft/runners/evaluation.py)."""
        return run_evaluation(self, splits, tag, epoch)

    def _finish(self) -> Dict[str, Any]:
        results: Dict[str, Any] = {"progress": asdict(self.progress), "run_dir": str(self.run_dir)}
        if self.progress.best_agg is not None:
            start = self.start_metrics
            before = "" if not start else "untrained %.4f -> " % (sum(m["agg_metrics"] for m in start.values()) / len(start))
            logger.info("validation agg_metrics: %sbest %.4f at step %d", before, self.progress.best_agg, self.progress.best_step)
        best = self.run_dir / ckpt_io.BEST
        module = self.strategy.module
        if self.strategy.name == "deepspeed" and dist.is_main_process():
            results["fp32"] = self._consolidate_fp32()
        if best.is_file():  # the model leaves training with its best weights
            with gathered(module):  # ZeRO-3: full parameters to load into
                ckpt_io.load_model_weights(module, best)
        if self.run_cfg.test_splits:
            logger.info("testing with the %s weights", f"best (step {self.progress.best_step})" if best.is_file() else "final")
            results["test"] = self.run_evaluation(list(self.run_cfg.test_splits), tag="test")
        if self.run_cfg.export_hf or self.config.model_cfg.get("peft"):
            with gathered(module):
                if dist.is_main_process():
                    results["export"] = {k: str(v) for k, v in export(module, self.run_dir).items()}
                    logger.info("exported %s", results["export"])
        self._log_skipped()
        if dist.is_main_process() and self.run_cfg.plot_curves:
            png = plot_curves(self.run_dir / "log.jsonl", self.run_dir / "curves.png")
            if png:
                logger.info("curves saved to %s", png)
        self.sinks.close()
        return results

    def _log_skipped(self) -> None:
        """Unreadable samples per split (training: this run since it started or resumed)."""
        totals = {}
        if getattr(self, "stream", None) is not None:
            totals["train"] = summed_over_ranks(self.stream.skips.skipped, self.stream.skips.seen, self.device)
        totals.update(self.skip_totals)
        if totals:
            logger.info("unreadable samples skipped: %s", skip_summary(totals))

    def _consolidate_fp32(self) -> Optional[str]:
        """The final trainable weights in fp32 from the ZeRO shards (``model_fp32.pth``); a
        failure is a warning, since the run's checkpoints are already written."""
        from vlft.runners.zero_weights import FP32, consolidate_fp32

        try:
            return str(consolidate_fp32(self.run_dir / ckpt_io.LATEST, self.run_dir / FP32))
        except Exception as err:  # the training itself succeeded; say how to do it by hand
            logger.warning("could not consolidate the fp32 weights (%s: %s); run the zero_to_fp32.py script in %s.ds",
                           type(err).__name__, err, self.run_dir / ckpt_io.LATEST)
            return None

    # ------------------------------------------------------------------ checkpoints
    def _model_state(self, full: bool) -> Dict[str, torch.Tensor]:
        return ckpt_io.model_state(self.strategy.module, full, state=self.strategy.model_state_dict())

    def save_resumable(self, path: Optional[Path] = None) -> Path:
        """Everything needed to continue exactly, in ``path`` (default checkpoint_latest.pth);
        every rank must call it (RNG states are gathered)."""
        path = path or self.run_dir / ckpt_io.LATEST
        rngs = dist.all_gather_object(rng_state())
        model_state = self._model_state(self.run_cfg.save_full)
        self.strategy.save_extra(path)
        if dist.is_main_process():
            ckpt_io.atomic_save({
                "format": ckpt_io.FORMAT,
                "model": model_state,
                "strategy": self.strategy.state_dict(),
                "lr_sched": self.lr_sched.state_dict(),
                "progress": asdict(self.progress),
                "rng": rngs,
                "config": self.config.to_yaml(),
            }, path)
        dist.barrier()
        return path

    def save_best(self) -> None:
        state = self._model_state(self.run_cfg.save_full)
        if dist.is_main_process():
            ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "model": state, "progress": asdict(self.progress),
                                 "config": self.config.to_yaml()}, self.run_dir / ckpt_io.BEST)
