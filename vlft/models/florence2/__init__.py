"""Florence-2 family (``florence2``): see ``vlft.models.florence2.model``."""
from vlft.models.florence2.model import Florence2

__all__ = ["Florence2"]
