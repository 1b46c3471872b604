from vlft.models.base_model import BaseModel
from vlft.models.toy_classifier import ToyClassifier

__all__ = ["BaseModel", "ToyClassifier"]
