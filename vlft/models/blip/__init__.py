from vlft.models.blip.blip_caption import BlipCaption
from vlft.models.blip.blip_nlvr import BlipNLVR
from vlft.models.blip.blip_pretrain import BlipPretrain
from vlft.models.blip.blip_retrieval import BlipFeatureExtractor, BlipImageTextMatching, BlipRetrieval
from vlft.models.blip.blip_vqa import BlipVqa

__all__ = ["BlipCaption", "BlipFeatureExtractor", "BlipImageTextMatching", "BlipNLVR", "BlipPretrain", "BlipRetrieval",
           "BlipVqa"]
