"""torchvision's transforms, imported when a processor is first built, not with vlft.

``import torchvision`` imports all of torchvision (its models and ops, and through
them ``torch._dynamo``): about 0.9 s on a 2-core machine, paid by every ``import
vlft``, the one-line config errors and ``--help`` included. The processors use these
stand-ins instead, which import the real module on first attribute access.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType = None  # type: ignore[assignment]

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


v2 = LazyModule("torchvision.transforms.v2")
F = LazyModule("torchvision.transforms.v2.functional")
tv_tensors = LazyModule("torchvision.tv_tensors")
