from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from vlft.datasets.builders.caption_builders import (
    COCOCapBuilder,
    CustomCaptionBuilder,
    HFCaptionBuilder,
    WebDatasetCaptionBuilder,
)
from vlft.datasets.builders.retrieval_builders import (
    COCORetrievalBuilder,
    CustomRetrievalBuilder,
    Flickr30kBuilder,
)
from vlft.datasets.builders.synthetic_shapes import SyntheticShapesBuilder
from vlft.datasets.builders.vqa_builders import COCOVQABuilder, CustomVQABuilder

__all__ = [
    "BaseDatasetBuilder",
    "SyntheticShapesBuilder",
    "COCOCapBuilder",
    "CustomCaptionBuilder",
    "HFCaptionBuilder",
    "WebDatasetCaptionBuilder",
    "COCORetrievalBuilder",
    "Flickr30kBuilder",
    "CustomRetrievalBuilder",
    "COCOVQABuilder",
    "CustomVQABuilder",
]
