"""MiniGPT4-Qwen: BLIP-2's vision side, a projection and a chat LLM (see ``model``)."""
from vlft.models.minigpt4qwen.model import MiniGPT4Qwen

__all__ = ["MiniGPT4Qwen"]
