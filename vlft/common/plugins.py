"""Registering user code without editing vlft.

Three ways, all explicit imports:
- ``imports:`` at the top of a project YAML, a list of file paths (relative to the
  working directory or to the YAML's folder) and/or importable module names;
- the ``VLFT_PLUGINS`` environment variable, the same list separated by ``:`` or ``,``;
- Python entry points in the ``vlft.plugins`` group of an installed package.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Iterable, List, Optional

logger = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "vlft.plugins"
_entry_points_loaded = False


def import_user_modules(items: Iterable[str], base_dir: Optional[Path] = None) -> List[ModuleType]:
    """Import each plugin (a ``.py`` path or a module name) once; return the modules."""
    from vlft.common.config import ConfigError

    env = os.environ.get("VLFT_PLUGINS", "")
    items = list(items) + [p for p in env.replace(",", ":").split(":") if p]
    load_entry_points()
    modules = []
    for item in items:
        item = str(item)
        if item.endswith(".py") or os.sep in item:
            path = _find_file(item, base_dir)
            if path is None:
                raise ConfigError(f"imports: plugin file '{item}' not found (looked in {Path.cwd()} and {base_dir})")
            modules.append(_import_file(path))
        else:
            try:
                modules.append(importlib.import_module(item))
            except ModuleNotFoundError as err:
                raise ConfigError(f"imports: cannot import plugin module '{item}': {err}") from None
    return modules


def load_entry_points() -> None:
    """Import every installed package's ``vlft.plugins`` entry point (once per process)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        logger.debug("loading vlft plugin %s", ep.value)
        ep.load()


def _find_file(item: str, base_dir: Optional[Path]) -> Optional[Path]:
    for root in (Path.cwd(), base_dir):
        if root is not None and (root / item).is_file():
            return (root / item).resolve()
    return None


def _import_file(path: Path) -> ModuleType:
    # one module name per file path, so importing the same file twice is a no-op
    name = "vlft_plugin_" + path.stem + "_" + hashlib.sha1(str(path).encode()).hexdigest()[:8]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
