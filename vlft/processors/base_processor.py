"""Processors turn one raw item (a PIL image, a caption) into model input."""
from __future__ import annotations

from typing import Any, Mapping, Optional


class BaseProcessor:
    """A callable built ``from_config``; train and eval variants are separate classes."""

    def __call__(self, item: Any) -> Any:
        return item

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]] = None) -> "BaseProcessor":
        return cls()
