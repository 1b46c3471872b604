"""``toy_classifier``: a small CNN image classifier.

Not a vision-language model: it is the smallest real model the runner can train
end to end (the built-in demo until the BLIP family lands, and the runner benchmark).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vlft.common.registry import registry
from vlft.models.base_model import BaseModel


@registry.register_model("toy_classifier")
class ToyClassifier(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": "configs/models/toy_classifier/tiny.yaml",
        "small": "configs/models/toy_classifier/small.yaml",
    }

    def __init__(self, num_classes: int = 9, width: int = 16, dropout: float = 0.1):
        super().__init__()
        self.visual_encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width * 16, 4 * width), nn.GELU(),
                                  nn.LayerNorm(4 * width), nn.Linear(4 * width, num_classes))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ToyClassifier":
        model = cls(num_classes=cfg.get("num_classes", 9), width=cfg.get("width", 16), dropout=cfg.get("dropout", 0.1))
        if cfg.get("load_finetuned") and cfg.get("finetuned"):
            model.load_checkpoint(cfg.finetuned)
        elif cfg.get("load_pretrained") and cfg.get("pretrained"):
            model.load_checkpoint(cfg.pretrained)
        return model

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual_encoder(image))

    def forward(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        logits = self.logits(samples["image"])
        return {"loss": F.cross_entropy(logits.float(), samples["label"]), "logits": logits}

    @torch.no_grad()
    def predict(self, samples: Mapping[str, Any]) -> List[int]:
        return self.logits(samples["image"]).argmax(-1).tolist()
