from vlft.models.blip.blip_caption import BlipCaption
from vlft.models.blip.blip_vqa import BlipVqa

__all__ = ["BlipCaption", "BlipVqa"]
