from vlft.datasets.builders import (
    COCOCapBuilder,
    CustomCaptionBuilder,
    HFCaptionBuilder,
    SyntheticShapesBuilder,
    WebDatasetCaptionBuilder,
)
from vlft.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset
from vlft.datasets.image_io import load_image
from vlft.datasets.wds_dataset import WebDatasetCaptions

__all__ = [
    "SyntheticShapesBuilder",
    "COCOCapBuilder",
    "CustomCaptionBuilder",
    "HFCaptionBuilder",
    "WebDatasetCaptionBuilder",
    "CaptionDataset",
    "CaptionEvalDataset",
    "WebDatasetCaptions",
    "load_image",
]
