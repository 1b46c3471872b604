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
from vlft.datasets.builders import (
    AOKVQABuilder,
    GQABuilder,
    NLVRBuilder,
    NoCapsBuilder,
    OKVQABuilder,
    VGVQABuilder,
)
from vlft.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset, ImageTextPairDataset
from vlft.datasets.image_io import load_image
from vlft.datasets.nlvr_datasets import NLVRDataset, NLVREvalDataset
from vlft.datasets.retrieval_datasets import RetrievalEvalDataset
from vlft.datasets.vqa_datasets import AOKVQAEvalDataset, VQADataset, VQAEvalDataset
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
    "AOKVQAEvalDataset",
    "ImageTextPairDataset",
    "NLVRDataset",
    "NLVREvalDataset",
    "NoCapsBuilder",
    "OKVQABuilder",
    "AOKVQABuilder",
    "GQABuilder",
    "VGVQABuilder",
    "NLVRBuilder",
]
