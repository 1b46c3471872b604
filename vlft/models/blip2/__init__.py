from vlft.models.blip2.blip2_opt import Blip2OPT
from vlft.models.blip2.blip2_qformer import Blip2FeatureExtractor, Blip2ImageTextMatching, Blip2Qformer
from vlft.models.blip2.blip2_t5 import Blip2T5

__all__ = ["Blip2Qformer", "Blip2FeatureExtractor", "Blip2ImageTextMatching", "Blip2OPT", "Blip2T5"]
