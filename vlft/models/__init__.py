from vlft.models.base_model import BaseModel
from vlft.models.blip import BlipCaption
from vlft.models.toy_classifier import ToyClassifier
from vlft.zoo import load_model, load_model_and_preprocess, load_preprocess, model_zoo

__all__ = ["BaseModel", "BlipCaption", "ToyClassifier", "load_model", "load_model_and_preprocess", "load_preprocess", "model_zoo"]
