"""Name -> class registries, with LAVIS's method names.

Differences from LAVIS, on purpose:
- an unknown name raises ``KeyError`` naming the kind and the nearest registered
  names, instead of returning ``None`` and failing later;
- registering a name twice raises, so two plugins cannot silently shadow each other;
- only classes live here: paths and run state belong to the config and the runner;
- registration happens where a module is imported explicitly (see
  ``vlft/__init__.py`` and ``vlft.common.plugins``), never through ``import *``.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Dict, List, Type


def nearest(name: str, candidates, n: int = 3) -> List[str]:
    """The registered names closest to ``name`` (for error messages)."""
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if not close:  # substring matches help with long names such as "coco_caption"
        close = [c for c in candidates if name and (name in c or c in name)][:n]
    return close


def _same_class(a: type, b: type) -> bool:
    """The same class, or the same source class imported twice under two module names
    (a plugin file named in a YAML's ``imports:`` and also imported by the user)."""
    if a is b:
        return True
    try:
        return a.__qualname__ == b.__qualname__ and inspect.getsourcefile(a) == inspect.getsourcefile(b)
    except TypeError:  # built-in or dynamically made classes have no source file
        return False


class Registry:
    """One kind of registered class (models, tasks, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: Dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def wrap(cls: type) -> type:
            if not isinstance(cls, type):
                raise TypeError(f"only classes can be registered as {self.kind}, got {cls!r}")
            if name in self._classes and not _same_class(self._classes[name], cls):
                raise KeyError(
                    f"{self.kind} name '{name}' is already registered to "
                    f"{self._classes[name].__module__}.{self._classes[name].__qualname__}"
                )
            self._classes[name] = cls
            return cls

        return wrap

    def get(self, name: str) -> type:
        if name in self._classes:
            return self._classes[name]
        hint = nearest(str(name), self._classes)
        msg = f"unknown {self.kind} '{name}'"
        msg += f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else "."
        msg += f" Registered {self.kind}s: {', '.join(sorted(self._classes)) or '(none)'}"
        raise KeyError(msg)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def names(self) -> List[str]:
        return sorted(self._classes)

    def unregister(self, name: str) -> None:
        """Remove a name (tests and notebooks that re-define a class use this)."""
        self._classes.pop(name, None)


class _Registries:
    """The facade LAVIS users know: ``registry.register_model(name)`` and friends."""

    def __init__(self):
        self.models = Registry("model")
        self.builders = Registry("dataset builder")
        self.processors = Registry("processor")
        self.tasks = Registry("task")
        self.runners = Registry("runner")
        self.lr_schedulers = Registry("lr scheduler")

    # --- models
    def register_model(self, name: str):
        return self.models.register(name)

    def get_model_class(self, name: str) -> Type:
        return self.models.get(name)

    def list_models(self) -> List[str]:
        return self.models.names()

    # --- dataset builders
    def register_builder(self, name: str):
        return self.builders.register(name)

    def get_builder_class(self, name: str) -> Type:
        return self.builders.get(name)

    def list_datasets(self) -> List[str]:
        return self.builders.names()

    # --- processors
    def register_processor(self, name: str):
        return self.processors.register(name)

    def get_processor_class(self, name: str) -> Type:
        return self.processors.get(name)

    def list_processors(self) -> List[str]:
        return self.processors.names()

    # --- tasks
    def register_task(self, name: str):
        return self.tasks.register(name)

    def get_task_class(self, name: str) -> Type:
        return self.tasks.get(name)

    def list_tasks(self) -> List[str]:
        return self.tasks.names()

    # --- runners
    def register_runner(self, name: str):
        return self.runners.register(name)

    def get_runner_class(self, name: str) -> Type:
        return self.runners.get(name)

    def list_runners(self) -> List[str]:
        return self.runners.names()

    # --- learning-rate schedulers
    def register_lr_scheduler(self, name: str):
        return self.lr_schedulers.register(name)

    def get_lr_scheduler_class(self, name: str) -> Type:
        return self.lr_schedulers.get(name)

    def list_lr_schedulers(self) -> List[str]:
        return self.lr_schedulers.names()


registry = _Registries()
