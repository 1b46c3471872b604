from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from vlft.datasets.builders.caption_builders import (
    COCOCapBuilder,
    ConceptualCaption3MBuilder,
    ConceptualCaption12MBuilder,
    CustomCaptionBuilder,
    HFCaptionBuilder,
    NoCapsBuilder,
    SBUCaptionBuilder,
    VGCaptionBuilder,
    WebDatasetCaptionBuilder,
)
from vlft.datasets.builders.classification_builders import NLVRBuilder
from vlft.datasets.builders.detection_builders import (COCODetectionBuilder, FlorenceJsonlBuilder, GroundingJsonlBuilder,
                                                     HFFlorenceBuilder, ShapesDetectionBuilder)
from vlft.datasets.builders.instruction_builders import MiniGPT4InstructionBuilder  # noqa: F401  (and the others)
from vlft.datasets.builders.retrieval_builders import (
    COCORetrievalBuilder,
    CustomRetrievalBuilder,
    Flickr30kBuilder,
)
from vlft.datasets.builders.synthetic_shapes import SyntheticShapesBuilder
from vlft.datasets.builders.vqa_builders import (
    AOKVQABuilder,
    COCOVQABuilder,
    CustomVQABuilder,
    GQABuilder,
    OKVQABuilder,
    VGVQABuilder,
)

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
    "OKVQABuilder",
    "AOKVQABuilder",
    "GQABuilder",
    "VGVQABuilder",
    "NoCapsBuilder",
    "VGCaptionBuilder",
    "ConceptualCaption3MBuilder",
    "ConceptualCaption12MBuilder",
    "SBUCaptionBuilder",
    "NLVRBuilder",
]
