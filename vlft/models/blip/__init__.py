from vlft.models.blip.blip_caption import BlipCaption

__all__ = ["BlipCaption"]
