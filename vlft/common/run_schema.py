"""The ``run:`` section's keys: their library defaults, types and meaning.

This table is the single place where run defaults live (library defaults are the
lowest config layer). A task adds its own keys through ``BaseTask.RUN_OPTIONS``
(LAVIS keeps e.g. ``num_beams`` and ``max_len`` under ``run``).
Units: a *step* is one optimizer step (``accum_grad_iters`` micro-batches); the
schedulers, ``warmup_steps``, ``max_iters`` and checkpoint intervals count steps.

Numbers may be written as strings (LAVIS's YAMLs quote some: ``max_iters: "2e4"``,
``init_lr: "2e-6"``): a string that parses as a number is read as that number where
the key is numeric, and an integer key takes any integral value (``2e4`` -> 20000).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class Field:
    default: Any
    types: Optional[Tuple[type, ...]]  # None: any value
    doc: str
    minimum: Optional[float] = None  # the smallest valid number (None: unbounded; null values pass)


_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_OPT_NUM = (int, float, type(None))

RUN_FIELDS: Dict[str, Field] = {
    # what to run
    "task": Field(None, (str,), "registered task name"),
    "runner": Field("runner_base", (str,), "runner_base (epochs) | runner_iter (iterations) | runner_deepspeed"),
    "evaluate": Field(False, (bool,), "only evaluate (no training)"),
    "train_splits": Field(["train"], (list,), "splits trained on"),
    "valid_splits": Field([], (list,), "splits validated after each (inner) epoch; best checkpoint by agg_metrics"),
    "test_splits": Field([], (list,), "splits evaluated with the best checkpoint after training"),
    # optimisation
    "lr_sched": Field("linear_warmup_cosine_lr", (str,), "registered lr scheduler"),
    "init_lr": Field(1e-4, _NUM, "peak learning rate", minimum=0),
    "min_lr": Field(0.0, _NUM, "final learning rate (cosine) / floor (step)", minimum=0),
    "warmup_lr": Field(0.0, _NUM, "learning rate at step 0 of warm-up", minimum=0),
    "warmup_steps": Field(0, (int,), "linear warm-up length in optimizer steps (may span epochs)", minimum=0),
    "lr_decay_rate": Field(0.9, _NUM, "per-epoch decay of linear_warmup_step_lr", minimum=0),
    "weight_decay": Field(0.05, _NUM, "AdamW weight decay (never applied to biases, norms, 1-d params)", minimum=0),
    "beta2": Field(0.999, _NUM, "AdamW beta2", minimum=0),
    "optimizer_impl": Field("auto", (str,), "AdamW kernel: auto (fused where the device supports it, else foreach; "
                            "torch's default under DeepSpeed) | fused | foreach | single; each resumes exactly"),
    "lr_multipliers": Field({}, (dict,), "{module-name pattern: lr factor}, e.g. {visual_encoder: 0.1}"),
    "lr_layer_decay": Field(1.0, _NUM, "layer-wise lr decay of a trained ViT (vlft/runners/optim.py): block i of n "
                            "gets decay ** (n - i), the embeddings decay ** (n + 1); 1: none. Applied only with "
                            "apply_lr_layer_decay (LAVIS computes it but its schedulers never apply it)", minimum=0),
    "apply_lr_layer_decay": Field(False, (bool,), "apply lr_layer_decay (false: ignore it, as LAVIS's training does)"),
    "max_grad_norm": Field(None, _OPT_NUM, "clip the global gradient norm to this value", minimum=0),
    "accum_grad_iters": Field(1, (int,), "micro-batches per optimizer step", minimum=1),
    "amp": Field(False, (bool, str), "false | bf16 | fp16 (true means fp16, as in LAVIS)"),
    "max_nonfinite_steps": Field(5, (int,), "abort after this many consecutive non-finite losses", minimum=1),
    # schedule
    "max_epoch": Field(1, (int,), "epochs (runner_base)"),
    "max_iters": Field(None, _OPT_INT, "optimizer steps (runner_iter)", minimum=1),
    "iters_per_inner_epoch": Field(None, _OPT_INT, "steps between validations (runner_iter)", minimum=1),
    "val_freq": Field(1, (int,), "validate every N (inner) epochs: runner_base after epochs 0, N, 2N, ... "
                      "(0-based, as LAVIS), runner_iter after inner epochs N, 2N, ...", minimum=1),
    "validate_at_start": Field(False, (bool,), "also validate before the first step (the untrained baseline)"),
    "early_stop_patience": Field(None, _OPT_INT, "stop after this many validations without improvement", minimum=1),
    # data
    "batch_size_train": Field(8, (int,), "per-process training batch", minimum=1),
    "batch_size_eval": Field(8, (int,), "per-process evaluation batch", minimum=1),
    "use_dist_eval_sampler": Field(True, (bool,), "shard evaluation splits over the processes; false: every "
                                   "process evaluates the whole split (LAVIS's retrieval setting)"),
    "num_workers": Field(0, (int,), "DataLoader workers per process"),
    "train_dataset_ratios": Field(None, (dict, type(None)), "{dataset name: weight}: mix the training datasets by "
                                  "ratio (seeded, resumable; vlft/runners/mixing.py) instead of concatenating them"),
    "max_bad_sample_fraction": Field(0.05, _NUM, "stop when more than this fraction of samples cannot be read", minimum=0),
    "seed": Field(42, (int,), "random seed (each rank adds its rank)"),
    # hardware and distribution
    "device": Field("auto", (str,), "auto | cpu | cuda"),
    "num_threads": Field("auto", (int, str), "torch CPU threads per process: auto (cores // processes on the node "
                         "- num_workers, at least 1; $OMP_NUM_THREADS if set) | 0 (leave torch's count; its "
                         "default is one per core) | N"),
    "distributed": Field(True, (bool,), "use torch.distributed when launched with several processes"),
    "dist_backend": Field("auto", (str,), "auto (nccl on GPU, gloo on CPU) | nccl | gloo"),
    "dist_url": Field("env://", (str,), "kept for LAVIS configs; torchrun's environment is used"),
    "world_size": Field(1, (int,), "kept for LAVIS configs; the launcher decides", minimum=1),
    "gpu": Field(None, _OPT_INT, "kept for LAVIS configs"),
    "find_unused_parameters": Field(False, (bool,), "DDP option for models with unused branches"),
    "deepspeed_config": Field(None, (dict, type(None)), "inline DeepSpeed config (zero_optimization, bf16, ...)"),
    # output, checkpoints, logging
    "cache_root": Field(None, _OPT_STR, "root for relative data and checkpoint paths and for downloaded "
                        "checkpoints; default $VLFT_CACHE_ROOT or ~/.cache/vlft"),
    "output_dir": Field("output/${run.task}", (str,), "where logs, configs and checkpoints go"),
    "resume_ckpt_path": Field(None, _OPT_STR, "checkpoint to resume from, or 'auto' for the latest in output_dir"),
    "checkpoint_every_iters": Field(0, (int,), "also write the resumable checkpoint every N steps (0: per inner epoch only)", minimum=0),
    "save_freq": Field(-1, (int,), "also keep checkpoint_<epoch>.pth (runner_iter: checkpoint_<step>.pth) every N "
                       "(inner) epochs; -1: only checkpoint_latest and checkpoint_best (LAVIS's default is 5)"),
    "export_hf": Field(False, (bool,), "at the end, save the best model in HF format (hf_model/); peft runs also save adapter/"),
    "save_full": Field(False, (bool,), "save every parameter, not only the trainable ones"),
    "log_freq": Field(50, (int,), "console / JSON-lines logging interval in steps", minimum=1),
    "log_backends": Field([], (list,), "extra metric sinks: tensorboard, wandb"),
    "wandb_project": Field(None, _OPT_STR, "W&B project (credentials come from the environment only)"),
    "plot_curves": Field(True, (bool,), "save loss / lr / metric curves as PNG at the end"),
}


def run_defaults() -> Dict[str, Any]:
    return {k: f.default for k, f in RUN_FIELDS.items()}
