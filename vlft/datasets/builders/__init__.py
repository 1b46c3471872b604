from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from vlft.datasets.builders.caption_builders import (
    COCOCapBuilder,
    CustomCaptionBuilder,
    HFCaptionBuilder,
    WebDatasetCaptionBuilder,
)
from vlft.datasets.builders.synthetic_shapes import SyntheticShapesBuilder

__all__ = [
    "BaseDatasetBuilder",
    "SyntheticShapesBuilder",
    "COCOCapBuilder",
    "CustomCaptionBuilder",
    "HFCaptionBuilder",
    "WebDatasetCaptionBuilder",
]
