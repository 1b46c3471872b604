"""``base_instruction``: the text processor MiniGPT4Qwen's YAMLs name for instruction data.

The reference's processor returns its text unchanged (its ``max_words`` is read and never
used); here likewise, so its YAMLs run as written. Conversations are formatted by the
LLM's chat template (:mod:`vlft.processors.chat`), not by a text processor.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from vlft.common.registry import registry
from vlft.processors.base_processor import BaseProcessor


@registry.register_processor("base_instruction")
class BaseInstructionProcessor(BaseProcessor):
    """Identity on text; ``max_words`` is accepted (and, as in the reference, not applied)."""

    def __init__(self, max_words: int = 50):
        self.max_words = max_words

    def __call__(self, text: Any) -> Any:
        return text

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]] = None) -> "BaseInstructionProcessor":
        return cls(max_words=int((cfg or {}).get("max_words", 50)))
