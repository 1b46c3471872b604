"""Validation of the ``datasets:`` section against each builder's schema and its processors.

A builder's valid keys are those of its default YAMLs (``DATASET_CONFIG_DICT``) plus what
the classes of its MRO declare (``BaseDatasetBuilder`` documents the attributes):
``DATASET_KEYS`` (``datasets.<name>.<key>``), ``BUILD_INFO_KEYS``
(``build_info.<key>``) and ``SPLIT_KEYS`` (``build_info.annotations.<split>.<key>``; a
source option read by ``option()`` may be set per split too, so build_info's keys other
than ``annotations`` / ``images`` are valid there as well). Split names are free. A
builder that declares no schema of its own (no default YAML, no ``SPLIT_KEYS`` beyond the
base class's: typically a plugin whose dataset class reads its split's section itself)
has its split keys left unchecked, since only its dataset class knows them.

A processor's valid keys are its ``CONFIG_KEYS`` when it declares them (a ``from_config``
that reads fewer keys than ``__init__`` takes), else its ``__init__`` parameters.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, FrozenSet, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from vlft.common.registry import registry
from vlft.common.validate_common import ConfigError, Layers, declared, did_you_mean, plain
from vlft.common.validate_run import registered

PROCESSOR_KEYS = ("vis_processor", "text_processor")


@functools.lru_cache(maxsize=None)
def builder_schema(builder_cls: type) -> Tuple[FrozenSet[str], FrozenSet[str], Optional[FrozenSet[str]]]:
    """(dataset keys, build_info keys, split keys) of a builder; split keys are None
    when the builder declares no split schema (see the module docstring)."""
    from vlft.common.utils import resolve_config_file

    ds_keys, info_keys, split_keys = (set(declared(builder_cls, a)) for a in ("DATASET_KEYS", "BUILD_INFO_KEYS", "SPLIT_KEYS"))
    for path in (getattr(builder_cls, "DATASET_CONFIG_DICT", {}) or {}).values():
        try:
            sections = OmegaConf.to_container(OmegaConf.load(resolve_config_file(path))).get("datasets") or {}
        except Exception:  # a missing default YAML is reported when the type is chosen
            continue
        for section in sections.values():
            ds_keys.update(section or {})
            build_info = (section or {}).get("build_info") or {}
            info_keys.update(build_info)
            for split in (build_info.get("annotations") or {}).values():
                split_keys.update(split if isinstance(split, dict) else {})
    split_keys |= info_keys - {"annotations", "images"}
    if not _declares_split_schema(builder_cls):
        split_keys = None
    return frozenset(ds_keys), frozenset(info_keys), None if split_keys is None else frozenset(split_keys)


def _declares_split_schema(builder_cls: type) -> bool:
    from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder

    return bool(getattr(builder_cls, "DATASET_CONFIG_DICT", None)) or any(
        "SPLIT_KEYS" in klass.__dict__ for klass in builder_cls.__mro__ if klass is not BaseDatasetBuilder)


@functools.lru_cache(maxsize=None)
def processor_keys(proc_cls: type) -> FrozenSet[str]:
    declared = getattr(proc_cls, "CONFIG_KEYS", None)
    if declared is not None:
        return frozenset(declared) | {"name"}
    params = inspect.signature(proc_cls.__init__).parameters.values()
    keys = {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return frozenset(keys | {"name"})


def _unknown(keys, valid, prefix: str, what: str, layers: Layers) -> None:
    for key in keys:
        if key not in valid:
            raise ConfigError(f"unknown key {prefix}.{key} for {what}{did_you_mean(key, valid)}"
                              f"{layers.note(f'{prefix}.{key}')}. Valid keys: {', '.join(sorted(valid))}")


def validate_datasets(cfg: DictConfig, layers: Optional[Layers] = None) -> None:
    """Every ``datasets.<name>`` section: its keys, build_info keys, split keys and processors."""
    layers = layers or Layers()
    for name, ds_cfg in (cfg.get("datasets") or {}).items():
        builder_cls = registered(registry.builders, name, f"datasets.{name}", layers)
        ds = plain(ds_cfg) or {}
        prefix = f"datasets.{name}"
        if not isinstance(ds, dict):
            raise ConfigError(f"{prefix} must be a mapping, got {ds!r}{layers.note(prefix)}")
        ds_keys, info_keys, split_keys = builder_schema(builder_cls)
        what = f"dataset builder {name}"
        _unknown(ds, ds_keys, prefix, what, layers)
        build_info = ds.get("build_info") or {}
        _unknown(build_info, info_keys, f"{prefix}.build_info", what, layers)
        for split, info in (build_info.get("annotations") or {}).items():
            if isinstance(info, dict) and split_keys is not None:
                _unknown(info, split_keys, f"{prefix}.build_info.annotations.{split}", what, layers)
        for proc_key in PROCESSOR_KEYS:
            _validate_processors(ds.get(proc_key), f"{prefix}.{proc_key}", layers)


def _validate_processors(section: Any, prefix: str, layers: Layers) -> None:
    if section is None:
        return
    if not isinstance(section, dict):
        raise ConfigError(f"{prefix} must map splits (train, eval) to processors, got {section!r}{layers.note(prefix)}")
    for split, proc in section.items():
        if proc is None:
            continue
        where = f"{prefix}.{split}"
        if not isinstance(proc, dict) or proc.get("name") is None:
            raise ConfigError(f"{where} needs a processor name (name: ...){layers.note(where)}; registered: "
                              f"{', '.join(registry.list_processors())}")
        proc_cls = registered(registry.processors, proc["name"], f"{where}.name", layers)
        _unknown(proc, processor_keys(proc_cls), where, f"processor {proc['name']}", layers)

