"""Builder ``synthetic_shapes``: the built-in demo data (see vlft.datasets.synthetic_shapes)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from torch.utils.data import Dataset

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from vlft.datasets.synthetic_shapes import make_scene, scene_caption

_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # disjoint scenes per split


class ShapesDataset(Dataset):
    def __init__(self, vis_processor, text_processor, split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                 run_cfg: Optional[Mapping[str, Any]] = None):
        self.vis_processor, self.text_processor = vis_processor, text_processor
        self.num_samples = int(info["num_samples"])
        self.seed = int(build_info.get("seed", 0))
        self.image_size = int(build_info.get("image_size", 64))
        self.offset = _SPLIT_OFFSET.get(split, 3_000_000)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        scene = make_scene(self.offset + index, self.seed, self.image_size)
        image = self.vis_processor(scene["image"]) if self.vis_processor else scene["image"]
        caption = self.text_processor(scene["caption"]) if self.text_processor else scene["caption"]
        return {"image": image, "text_input": caption, "label": scene["label"], "instance_id": index,
                "image_id": f"shapes_{self.offset + index}"}

    def ground_truth(self) -> dict:
        """Reference captions by image id (for the captioning metrics)."""
        return {f"shapes_{self.offset + i}": [scene_caption(self.offset + i, self.seed)] for i in range(self.num_samples)}


@registry.register_builder("synthetic_shapes")
class SyntheticShapesBuilder(BaseDatasetBuilder):
    train_dataset_cls = ShapesDataset
    eval_dataset_cls = ShapesDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/synthetic_shapes/defaults.yaml"}
