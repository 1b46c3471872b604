"""What the config validators share: ``ConfigError``, "did you mean" hints, and
``Layers``, which remembers the file layer each key of the merged config came from
(the project YAML, ``--options``, a model or dataset default YAML), so that an error
can say where to fix it."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Tuple

from omegaconf import DictConfig, OmegaConf

from vlft.common.registry import nearest


class ConfigError(ValueError):
    """A user-fixable problem in a config: the message says which key and what is valid."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    hint = nearest(str(name), sorted({str(c) for c in candidates}))
    return f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""


_MISSING = object()


class Layers:
    """The config layers, lowest first, each with the label an error message shows."""

    def __init__(self) -> None:
        self._layers: List[Tuple[str, Any]] = []

    def add(self, label: str, cfg: Any) -> None:
        """A layer above all others (the project YAML, then ``--options``)."""
        self._layers.append((label, cfg))

    def add_default(self, label: str, cfg: Any) -> None:
        """A default layer (a model's or dataset's YAML), below every user layer."""
        self._layers.insert(0, (label, cfg))

    def origin(self, key: str) -> str:
        """The label of the highest layer that sets the dotted ``key`` ("" if none does)."""
        parts = key.split(".")
        for label, cfg in reversed(self._layers):
            node = cfg
            for part in parts:
                if not isinstance(node, (DictConfig, dict)) or part not in node:
                    node = _MISSING
                    break
                node = node[part]
            if node is not _MISSING:
                return label
        return ""

    def note(self, key: str) -> str:
        """Where the dotted ``key`` was set, to end a message: `` (set in projects/x.yaml)``."""
        label = self.origin(key)
        return f" (set in {label})" if label else ""


def declared(cls: type, attr: str) -> Dict[str, Any]:
    """``attr`` (a mapping, or a sequence of names) merged over ``cls``'s MRO: a subclass
    adds to its bases' declarations and overrides their values."""
    merged: Dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        value = klass.__dict__.get(attr)
        if isinstance(value, Mapping):
            merged.update(value)
        elif value:
            merged.update(dict.fromkeys(value))
    return merged


def plain(value: Any) -> Any:
    """An OmegaConf node as plain Python (other values as they are)."""
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value
