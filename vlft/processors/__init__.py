from vlft.processors.base_processor import BaseProcessor
from vlft.processors.blip_processors import (
    Blip2ImageEvalProcessor,
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
    BlipImageEvalProcessor,
    BlipImageTrainProcessor,
    BlipQuestionProcessor,
)
from vlft.processors.image import SimpleImageEvalProcessor, SimpleImageTrainProcessor
from vlft.processors.chat import ChatEncoder  # noqa: F401  (conversations -> ids and labels)
from vlft.processors.instruction import BaseInstructionProcessor
from vlft.processors.florence2 import Florence2ImageEvalProcessor, Florence2ImageTrainProcessor

__all__ = [
    "BaseProcessor",
    "SimpleImageTrainProcessor",
    "SimpleImageEvalProcessor",
    "BlipImageTrainProcessor",
    "BlipImageEvalProcessor",
    "Blip2ImageTrainProcessor",
    "Blip2ImageEvalProcessor",
    "BlipCaptionProcessor",
    "BlipQuestionProcessor",
    "BaseInstructionProcessor",
]
