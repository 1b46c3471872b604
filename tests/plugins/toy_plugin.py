"""A plugin outside the vlft package, loaded through a YAML's ``imports:`` list.

It registers a tiny regression problem (builder, model, task) that drives the real
runner end to end in seconds, plus two test levers as task options: a SIGKILL at a
given micro-step (to interrupt a run the hard way) and non-finite losses at given
micro-steps.
"""
from __future__ import annotations

import os
import signal
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from vlft.models.base_model import BaseModel
from vlft.tasks.base_task import BaseTask

DIM = 8


class ToyRegressionData(Dataset):
    """y = x @ w + noise, fixed by (seed, split)."""

    def __init__(self, vis_processor, text_processor, split, info, build_info, run_cfg=None):
        split_no = {"train": 0, "val": 1, "test": 2}.get(split, 3)  # not hash(): str hashes vary per process
        g = torch.Generator().manual_seed(int(build_info.get("seed", 0)) * 7 + split_no)
        n = int(info["num_samples"])
        w = torch.linspace(-1, 1, DIM, dtype=torch.float32)
        self.x = torch.randn(n, DIM, generator=g)
        self.y = self.x @ w + 0.05 * torch.randn(n, generator=g)
        self.noise = float(build_info.get("augment_noise", 0.0)) if split == "train" else 0.0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.noise:  # random augmentation, drawn from the global RNG like torchvision's
            x = x + self.noise * torch.randn(DIM)
        return {"x": x, "y": self.y[i], "instance_id": i}


@registry.register_builder("toy_regression")
class ToyRegressionBuilder(BaseDatasetBuilder):
    train_dataset_cls = ToyRegressionData
    eval_dataset_cls = ToyRegressionData
    DATASET_CONFIG_DICT = {"default": os.path.join(os.path.dirname(__file__), "toy_regression.yaml")}


@registry.register_model("toy_regressor")
class ToyRegressor(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {"tiny": os.path.join(os.path.dirname(__file__), "toy_regressor_tiny.yaml")}

    def __init__(self, hidden: int = 16, dropout: float = 0.0, frozen_encoder: bool = False):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(DIM, hidden), nn.Tanh())
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 1)
        if frozen_encoder:
            self.encoder.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ToyRegressor":
        model = cls(hidden=cfg.get("hidden", 16), dropout=cfg.get("dropout", 0.0), frozen_encoder=cfg.get("frozen_encoder", False))
        if cfg.get("load_finetuned") and cfg.get("finetuned"):
            model.load_checkpoint(cfg.finetuned)
        return model

    def predict(self, samples) -> torch.Tensor:
        return self.head(self.norm(self.dropout(self.encoder(samples["x"])))).squeeze(-1)

    def forward(self, samples) -> Dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.predict(samples).float(), samples["y"])}


@registry.register_task("toy_regression")
class ToyRegressionTask(BaseTask):
    RUN_OPTIONS = {"kill_at_micro_step": None, "nan_at_micro_steps": []}

    def __init__(self, kill_at_micro_step: Optional[int] = None, nan_at_micro_steps: Optional[List[int]] = None):
        super().__init__()
        self.kill_at = kill_at_micro_step
        self.nan_at = set(nan_at_micro_steps or [])
        self.micro_steps = 0

    def train_step(self, model, samples):
        self.micro_steps += 1
        if self.kill_at is not None and self.micro_steps == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no atexit: a real crash
        out = super().train_step(model, samples)
        if self.micro_steps in self.nan_at:
            out["loss"] = out["loss"] * float("nan")
        return out

    def valid_step(self, model, samples):
        err = (model.predict(samples).float() - samples["y"]) ** 2
        return [{"instance_id": int(i), "sq_err": float(e)} for i, e in zip(samples["instance_id"], err)]

    def after_evaluation(self, results, split_name, epoch, output_dir=None, dataset=None):
        mse = sum(r["sq_err"] for r in results) / len(results)
        return {"mse": mse, "agg_metrics": -mse, "count": len(results)}


@registry.register_builder("toy_regression_shifted")
class ToyRegressionShiftedBuilder(ToyRegressionBuilder):
    """The same problem drawn with another seed: a second dataset for multi-dataset runs."""
