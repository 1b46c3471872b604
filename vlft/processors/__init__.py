from vlft.processors.base_processor import BaseProcessor
from vlft.processors.image import SimpleImageEvalProcessor, SimpleImageTrainProcessor

__all__ = ["BaseProcessor", "SimpleImageTrainProcessor", "SimpleImageEvalProcessor"]
