"""Image processors on torchvision.transforms.v2."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from vlft.common.registry import registry
from vlft.processors.base_processor import BaseProcessor
from vlft.processors.lazy_torchvision import v2

# the CLIP statistics BLIP and BLIP-2 normalise with
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _ImageProcessor(BaseProcessor):
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> torch.Tensor:
        return self.transform(image)


def _to_normalised_tensor(mean, std):
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


@registry.register_processor("simple_image_train")
class SimpleImageTrainProcessor(_ImageProcessor):
    """Resize, random horizontal flip, normalise."""

    def __init__(self, image_size: int = 64, mean=CLIP_MEAN, std=CLIP_STD, hflip: float = 0.5):
        super().__init__(v2.Compose([v2.Resize((image_size, image_size), antialias=True), v2.RandomHorizontalFlip(hflip),
                                     *_to_normalised_tensor(mean, std)]))

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]] = None):
        cfg = cfg or {}
        return cls(image_size=cfg.get("image_size", 64), hflip=cfg.get("hflip", 0.5))


@registry.register_processor("simple_image_eval")
class SimpleImageEvalProcessor(_ImageProcessor):
    """Resize, normalise."""

    def __init__(self, image_size: int = 64, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__(v2.Compose([v2.Resize((image_size, image_size), antialias=True), *_to_normalised_tensor(mean, std)]))

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]] = None):
        return cls(image_size=(cfg or {}).get("image_size", 64))
