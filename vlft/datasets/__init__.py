from vlft.datasets.builders import (
    COCOCapBuilder,
    CustomCaptionBuilder,
    HFCaptionBuilder,
    SyntheticShapesBuilder,
    WebDatasetCaptionBuilder,
)
from vlft.datasets.builders import (
    COCORetrievalBuilder,
    COCOVQABuilder,
    CustomRetrievalBuilder,
    CustomVQABuilder,
    Flickr30kBuilder,
)
from vlft.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset
from vlft.datasets.image_io import load_image
from vlft.datasets.retrieval_datasets import RetrievalEvalDataset
from vlft.datasets.vqa_datasets import VQADataset, VQAEvalDataset
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
    "COCORetrievalBuilder",
    "Flickr30kBuilder",
    "CustomRetrievalBuilder",
    "COCOVQABuilder",
    "CustomVQABuilder",
    "RetrievalEvalDataset",
    "VQADataset",
    "VQAEvalDataset",
]
