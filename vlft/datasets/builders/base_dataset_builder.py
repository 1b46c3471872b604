"""Declarative dataset builders, as in LAVIS.

A builder names its dataset classes (``train_dataset_cls``, ``eval_dataset_cls``) and
its default YAML (``DATASET_CONFIG_DICT``); ``build_datasets`` makes one dataset per
split listed in ``build_info.annotations`` with the split's processors.

Builders whose sources differ only in how they read their files share the dataset
classes and declare their ``reader`` (one line), a function
``(split, info, build_info, run_cfg) -> records...`` that the dataset classes call
instead of their own ``read_annotations``. A builder without a training (or an
evaluation) dataset class, e.g. ``nocaps`` (eval only), rejects that split by name.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from omegaconf import OmegaConf

from vlft.common.registry import registry
from vlft.common.utils import resolve_config_file

logger = logging.getLogger(__name__)

#: what ``vlft.datasets.hf_source`` reads to load a Hugging Face dataset
HF_SOURCE_KEYS = ("path", "name", "data_dir", "data_files", "trust_remote_code", "split_ratios", "split_seed",
                  "source_split")
#: what the custom (JSON / JSONL / CSV) readers read besides their column keys
TABLE_KEYS = ("format", "csv_delimiter")


class BaseDatasetBuilder:
    train_dataset_cls: Optional[type] = None
    eval_dataset_cls: Optional[type] = None
    #: reads a split's annotations for the shared dataset classes; a plain function,
    #: ``staticmethod`` or ``functools.partial`` (always read from the class, never bound)
    reader: Optional[Callable[..., Any]] = None
    DATASET_CONFIG_DICT: Dict[str, str] = {}
    # The schema vlft.common.validate_datasets checks a ``datasets.<name>`` section
    # against before anything loads: the keys of the default YAMLs plus these, each
    # gathered over the MRO (a subclass declares only what its reader adds). Keys of
    # ``build_info`` other than annotations / images are valid per split too (``option()``).
    DATASET_KEYS: Tuple[str, ...] = ("type", "data_type", "dataset_card", "vis_processor", "text_processor",
                                     "build_info")
    BUILD_INFO_KEYS: Tuple[str, ...] = ("annotations", "images")
    SPLIT_KEYS: Tuple[str, ...] = ("storage",)

    def __init__(self, cfg: Optional[Mapping[str, Any]] = None, run_cfg: Optional[Mapping[str, Any]] = None):
        if cfg is None:  # the builder's own defaults, as LAVIS's load_dataset() does
            cfg = OmegaConf.load(self.default_config_path()).datasets
            cfg = next(iter(cfg.values()))
        self.config = cfg
        self.run_cfg = run_cfg or {}
        self.data_type = cfg.get("data_type", "images")
        self.vis_processors = {"train": None, "eval": None}
        self.text_processors = {"train": None, "eval": None}

    @classmethod
    def default_config_path(cls, type: str = "default"):
        return resolve_config_file(cls.DATASET_CONFIG_DICT[type])

    def build_processors(self) -> None:
        for attr, key in (("vis_processors", "vis_processor"), ("text_processors", "text_processor")):
            section = self.config.get(key) or {}
            for split in ("train", "eval"):
                proc_cfg = section.get(split)
                if proc_cfg is not None:
                    cls = registry.get_processor_class(proc_cfg.name)
                    getattr(self, attr)[split] = cls.from_config(proc_cfg)

    def build_datasets(self) -> Dict[str, Any]:
        self.build_processors()
        return self.build()

    def build(self) -> Dict[str, Any]:
        """One dataset per split named in ``build_info.annotations``."""
        build_info = self.config.get("build_info") or {}
        annotations = build_info.get("annotations") or {}
        if not annotations:
            raise ValueError(f"{type(self).__name__}: build_info.annotations names no split (e.g. train, val, test)")
        reader = _reader_of(type(self))
        datasets = {}
        for split, info in annotations.items():
            is_train = split == "train"
            cls = self.train_dataset_cls if is_train else self.eval_dataset_cls
            if cls is None:  # e.g. nocaps (evaluation only), vg_caption (training only)
                builds = "evaluation splits only (val, test, ...)" if is_train else "a training split ('train') only"
                raise ValueError(f"{type(self).__name__}: cannot build split '{split}': this builder has {builds}; "
                                 f"remove build_info.annotations.{split}")
            proc = "train" if is_train else "eval"
            extra = {"reader": reader} if reader is not None else {}
            datasets[split] = cls(
                vis_processor=self.vis_processors[proc],
                text_processor=self.text_processors[proc],
                split=split,
                info=info,
                build_info=build_info,
                run_cfg=self.run_cfg,
                **extra,
            )
        return datasets


def _reader_of(cls: type) -> Optional[Callable[..., Any]]:
    """The builder's ``reader`` as a plain callable: looked up in the class dicts, so a
    function assigned in a class body is never bound to the builder instance."""
    for klass in cls.__mro__:
        if "reader" in klass.__dict__:
            reader = klass.__dict__["reader"]
            return reader.__func__ if isinstance(reader, staticmethod) else reader
    return None
