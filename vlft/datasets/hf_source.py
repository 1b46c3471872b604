"""Hugging Face ``datasets`` as a captioning source (e.g. MedTrinity-25M's ``25M_demo``).

``build_info.path`` is what ``datasets.load_dataset`` takes (a hub id, a local
folder, or a packaged builder such as ``imagefolder`` / ``parquet`` / ``json`` with
``data_dir`` / ``data_files``); a folder written by ``Dataset.save_to_disk`` is read
with ``load_from_disk``. Only text columns are read up front: each record's image is
a lazy reference to its row, decoded by ``load_image`` when the item is fetched, so a
corrupt image becomes a skipped item instead of an exception inside ``datasets``.

When the source has a single split, ``split_ratios`` (e.g. ``{train: 0.9, val: 0.1}``)
partitions it (``source_split``, default ``train``) by a permutation drawn from
``split_seed``: the same seed gives the same partition in every process and every run.
The ratios' keys are the vlft splits unless ``annotations`` names them; a split whose
``annotations.<split>.split`` names a source split reads that split whole.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from vlft.common.utils import resolve_data_path
from vlft.datasets.caption_sources import image_root, option

logger = logging.getLogger(__name__)


class HFImageRef:
    """A picklable, lazy reference to the image in one row of a Hugging Face dataset."""

    __slots__ = ("table", "column", "row", "label")

    def __init__(self, table, column: str, row: int, label: str):
        self.table, self.column, self.row, self.label = table, column, row, label

    def __call__(self) -> Any:
        value = self.table[self.row][self.column]
        if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
            return value["path"]
        return value

    def __repr__(self) -> str:
        return f"row {self.row} of {self.label} (column '{self.column}')"


class HFRecords(Sequence):
    """Records built on access, so a split of millions of rows holds only its text columns."""

    def __init__(self, table, image_column: str, rows: np.ndarray, captions: List[Any], ids: List[Any], label: str):
        self.table, self.image_column, self.rows = table, image_column, rows
        self.captions, self.ids, self.label = captions, ids, label
        feature = table.features[image_column]
        self.image_is_path = getattr(feature, "dtype", None) in ("string", "large_string")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        row = int(self.rows[i])
        image = self.table[row][self.image_column] if self.image_is_path else HFImageRef(self.table, self.image_column, row, self.label)
        return {"image": image, "caption": self.captions[i], "image_id": self.ids[i]}


def read_hf(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
            run_cfg: Mapping[str, Any]) -> Tuple[HFRecords, Optional[Path]]:
    """Records of one split of a Hugging Face dataset (see the module docstring for the keys)."""
    import datasets

    image_col = option("image_column", info, build_info, "image")
    caption_col = option("caption_column", info, build_info, "caption")
    id_col = option("id_column", info, build_info)
    # a split that names its own source split (annotations.<split>.split) is read whole
    ratios = None if (info or {}).get("split") else build_info.get("split_ratios")
    source_split = option("source_split", {}, build_info, "train") if ratios else option("split", info, {}, split)

    table, label = _load_split(build_info, source_split, run_cfg)
    missing = [c for c in (image_col, caption_col, id_col) if c and c not in table.column_names]
    if missing:
        raise ValueError(
            f"hf_caption: {label} has no column '{missing[0]}'; its columns are {', '.join(table.column_names)} "
            "(set build_info.image_column / caption_column / id_column)"
        )
    rows = split_rows(len(table), ratios, int(build_info.get("split_seed", 42)), split) if ratios else np.arange(len(table))

    if isinstance(table.features[image_col], datasets.Image):
        # cheap metadata change: rows now yield {"bytes", "path"}, decoded later by load_image
        table = table.cast_column(image_col, datasets.Image(decode=False))
    text_cols = [caption_col] + ([id_col] if id_col else [])
    text = table.select_columns(text_cols).select(rows).to_dict() if len(rows) else {c: [] for c in text_cols}
    ids = text[id_col] if id_col else [int(r) for r in rows]  # the source row number: stable across splits
    records = HFRecords(table.select_columns([image_col]), image_col, rows, text[caption_col], ids, label)
    return records, image_root("hf_caption", build_info, run_cfg, required=False)


def with_ratio_splits(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """``config`` with ``build_info.annotations`` defaulted to one empty entry per key of
    ``build_info.split_ratios``: a source partitioned by ratio needs no per-split section."""
    build_info = config.get("build_info") or {}
    ratios = build_info.get("split_ratios")
    if build_info.get("annotations") or not ratios:
        return config
    return {**config, "build_info": {**build_info, "annotations": {split: {} for split in ratios}}}


def split_rows(n: int, ratios: Mapping[str, float], seed: int, split: str) -> np.ndarray:
    """Row indices of ``split`` in a seeded partition of ``n`` rows by ``ratios`` (in the
    order given; sums below 1 leave the remainder unused)."""
    names, fracs = list(ratios), [float(ratios[k]) for k in ratios]
    if split not in ratios:
        raise ValueError(f"hf_caption: split '{split}' is not in build_info.split_ratios ({', '.join(names)})")
    if any(f < 0 for f in fracs) or sum(fracs) > 1 + 1e-6:
        raise ValueError(f"hf_caption: build_info.split_ratios must be non-negative and sum to at most 1, got {dict(ratios)}")
    bounds = np.round(np.cumsum([0.0] + fracs) * n).astype(int)
    bounds[-1] = n if abs(sum(fracs) - 1) < 1e-6 else bounds[-1]
    order = np.random.default_rng(seed).permutation(n)
    k = names.index(split)
    return np.sort(order[bounds[k]:bounds[k + 1]])  # sorted: sequential reads from the arrow file


def _load_split(build_info: Mapping[str, Any], split: str, run_cfg: Mapping[str, Any]):
    """One split of the configured source as a ``datasets.Dataset`` and a label for messages."""
    import datasets

    path = build_info.get("path")
    if not path:
        raise ValueError("hf_caption: build_info.path is not set (a hub id such as 'UCSC-VLAA/MedTrinity-25M', "
                         "a local folder, or a builder name such as 'imagefolder' / 'parquet' / 'json')")
    local = resolve_data_path(str(path), run_cfg)
    subset = build_info.get("name")
    label = f"{path}" + (f" ({subset})" if subset else "") + f" split '{split}'"
    if local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(local))
    else:
        kwargs: Dict[str, Any] = {"name": subset}
        for key in ("revision", "cache_dir"):
            if build_info.get(key):
                kwargs[key] = str(build_info[key])
        if build_info.get("data_dir"):
            kwargs["data_dir"] = str(resolve_data_path(str(build_info["data_dir"]), run_cfg))
        if build_info.get("data_files"):
            kwargs["data_files"] = _resolve_files(build_info["data_files"], run_cfg)
        if build_info.get("trust_remote_code"):  # only on request: it runs the dataset's own code
            kwargs["trust_remote_code"] = True
        loaded = datasets.load_dataset(str(local) if local.exists() else str(path), **kwargs)
    if isinstance(loaded, datasets.Dataset):
        logger.info("hf_caption: %s is a single dataset; using all of it as split '%s'", path, split)
    elif isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(
                f"hf_caption: {path} has no split '{split}' (it has: {', '.join(loaded)}); map a vlft split to a "
                "source split with build_info.annotations.<split>.split, or partition one split with "
                "build_info.split_ratios"
            )
        loaded = loaded[split]
    return loaded, label


def _resolve_files(files: Any, run_cfg: Mapping[str, Any]) -> Any:
    def one(f: str) -> str:
        p = resolve_data_path(str(f), run_cfg)
        return str(p) if p.exists() else str(f)  # globs and URLs pass through

    if isinstance(files, (str, Path)):
        return one(files)
    if isinstance(files, Mapping):
        return {k: _resolve_files(v, run_cfg) for k, v in files.items()}
    return [one(f) for f in files]
