from vlft.models.base_model import BaseModel
from vlft.models.blip import (BlipCaption, BlipFeatureExtractor, BlipImageTextMatching, BlipNLVR, BlipPretrain,
                              BlipRetrieval, BlipVqa)
from vlft.models.blip2 import Blip2OPT, Blip2Qformer, Blip2T5
from vlft.models.florence2 import Florence2
from vlft.models.minigpt4qwen import MiniGPT4Qwen  # noqa: F401
from vlft.models.toy_classifier import ToyClassifier
from vlft.zoo import load_model, load_model_and_preprocess, load_preprocess, model_zoo

__all__ = ["BaseModel", "BlipCaption", "BlipFeatureExtractor", "BlipImageTextMatching", "BlipNLVR", "BlipPretrain",
           "BlipRetrieval", "BlipVqa", "Blip2Qformer", "Blip2OPT", "Blip2T5", "ToyClassifier", "load_model", "load_model_and_preprocess", "load_preprocess", "model_zoo"]
