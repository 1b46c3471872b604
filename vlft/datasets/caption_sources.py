"""Annotation readers for file-based captioning sources: each turns its files into the
records ``{"image", "caption", "image_id"}`` that ``vlft.datasets.caption_datasets``
serves. Paths follow ``resolve_data_path`` (absolute, relative to the working
directory when they exist there, else relative to the cache root).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Tuple

from vlft.common.utils import cache_root, resolve_data_path

KARPATHY_FORMAT = (
    "LAVIS's Karpathy-split JSON: a list of records, for train "
    '{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": "a man riding a bike", "image_id": "coco_391895"} '
    'and for val/test {"image": "val2014/COCO_val2014_000000184613.jpg", "caption": ["...", "..."]}; '
    "LAVIS's copies are coco_karpathy_{train,val,test}.json under "
    "https://storage.googleapis.com/sfr-vision-language-research/datasets/ (vlft downloads nothing)"
)
CUSTOM_FORMAT = (
    "a JSON list of records, JSONL (one record per line) or CSV/TSV with a header, each record having an image "
    "path (build_info.image_key, default 'image') relative to build_info.images.storage (default: the "
    "annotation file's folder) and a caption or a list of captions (build_info.caption_key, default 'caption')"
)


def option(key: str, info: Mapping[str, Any], build_info: Mapping[str, Any], default: Any = None) -> Any:
    """A source option: the split's ``annotations.<split>.<key>`` overrides ``build_info.<key>``."""
    value = info.get(key) if info else None
    if value is None:
        value = build_info.get(key) if build_info else None
    return default if value is None else value


def _where(raw: str, run_cfg: Mapping[str, Any]) -> str:
    p = Path(raw).expanduser()
    if p.is_absolute():
        return str(p)
    return f"{Path.cwd() / p} or {cache_root(run_cfg) / p} (run.cache_root / $VLFT_CACHE_ROOT)"


def annotation_files(source: str, split: str, info: Mapping[str, Any], run_cfg: Mapping[str, Any],
                     expected: str) -> List[Path]:
    """The files of ``build_info.annotations.<split>.storage`` (a path or a list of paths)."""
    storage = (info or {}).get("storage")
    if not storage:
        raise ValueError(f"{source}: build_info.annotations.{split}.storage is not set; expected {expected}")
    raws = [storage] if isinstance(storage, (str, Path)) else list(storage)
    paths = []
    for raw in raws:
        path = resolve_data_path(str(raw), run_cfg)
        if not path.is_file():
            raise FileNotFoundError(
                f"{source}: annotation file for split '{split}' not found: '{raw}' "
                f"(looked at {_where(str(raw), run_cfg)}). Expected {expected}"
            )
        paths.append(path)
    return paths


def image_root(source: str, build_info: Mapping[str, Any], run_cfg: Mapping[str, Any],
               required: bool) -> Optional[Path]:
    """``build_info.images.storage``, checked to exist; ``None`` when optional and unset."""
    images = (build_info or {}).get("images") or {}
    raw = images.get("storage") if isinstance(images, Mapping) else images
    if not raw:
        if required:
            raise ValueError(f"{source}: build_info.images.storage (the image root folder) is not set")
        return None
    root = resolve_data_path(str(raw), run_cfg)
    if not root.is_dir():
        raise FileNotFoundError(f"{source}: image folder build_info.images.storage='{raw}' not found "
                                f"(looked at {_where(str(raw), run_cfg)})")
    return root


def _read_json(path: Path, source: str, expected: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: {path} is not valid JSON ({err}); expected {expected}") from None


def coco_image_id(image: str) -> Hashable:
    """LAVIS's COCO id from a file name: ``val2014/COCO_val2014_000000391895.jpg`` -> 391895
    (the last ``_``-separated part of the stem, as an int when it is a number)."""
    stem = Path(str(image)).stem
    last = stem.split("_")[-1]
    return int(last) if last.isdigit() else stem


def read_coco_karpathy(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                       run_cfg: Mapping[str, Any], source: str = "coco_caption") -> Tuple[List[Dict[str, Any]], Path]:
    """Records of a Karpathy-split COCO JSON (train: one caption each; val/test: a list each).
    ``source`` is the builder name errors mention (other builders share this layout)."""
    files = annotation_files(source, split, info, run_cfg, KARPATHY_FORMAT)
    root = image_root(source, build_info, run_cfg, required=True)
    records = []
    for path in files:
        data = _read_json(path, source, KARPATHY_FORMAT)
        if not isinstance(data, list):
            raise ValueError(f"{source}: {path} holds a {type(data).__name__}, not a list; expected {KARPATHY_FORMAT}")
        for i, ann in enumerate(data):
            _require(ann, ("image", "caption"), path, i, source, KARPATHY_FORMAT)
            image_id = ann.get("image_id")
            records.append({"image": ann["image"], "caption": ann["caption"],
                            "image_id": image_id if image_id is not None else coco_image_id(ann["image"])})
    return records, root


PAIRS_FORMAT = (
    "LAVIS's image-text pair JSON: a list of records {\"image\": \"path/relative/to/images.storage.jpg\", "
    "\"caption\": \"a caption\"} (vg_caption: vg/annotations/vg_caption.json, conceptual_caption_3m / _12m: "
    "conceptual_caption/annotations/cc3m.json / cc12m.json, sbu_caption: sbu_captions/annotations/sbu.json; "
    "LAVIS hosts vg_caption.json and sbu.json under "
    "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/, and builds the CC files "
    "with its DownloadConceptualCaptions scripts)"
)
NOCAPS_FORMAT = (
    "LAVIS's NoCaps JSON (nocaps/annotations/nocaps_{val,test}.json from "
    "https://storage.googleapis.com/sfr-vision-language-research/datasets/): a list of records "
    "{\"image\": \"val/0013ea2087020901.jpg\", \"img_id\": 0} (val records may also hold \"caption\": [...], "
    "the reference captions; the official ones are in nocaps_val_4500_captions.json, see run.annotation_file)"
)


def _records_of(path: Path, source: str, expected: str) -> List[Any]:
    data = _read_json(path, source, expected)
    if not isinstance(data, list):
        raise ValueError(f"{source}: {path} holds a {type(data).__name__}, not a list; expected {expected}")
    return data


def read_image_text_pairs(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                          run_cfg: Mapping[str, Any], source: str = "image_text_pairs") -> Tuple[List[Dict[str, Any]], Path]:
    """Records of LAVIS's image-text pair files (one caption per record; an image may
    have several records, e.g. Visual Genome's region descriptions). ``source``: the
    builder name errors mention."""
    files = annotation_files(source, split, info, run_cfg, PAIRS_FORMAT)
    root = image_root(source, build_info, run_cfg, required=True)
    records = []
    for path in files:
        for i, ann in enumerate(_records_of(path, source, PAIRS_FORMAT)):
            _require(ann, ("image", "caption"), path, i, source, PAIRS_FORMAT)
            records.append({"image": ann["image"], "caption": ann["caption"], "image_id": ann["image"]})
    return records, root


def read_nocaps(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                run_cfg: Mapping[str, Any], source: str = "nocaps") -> Tuple[List[Dict[str, Any]], Path]:
    """Records of LAVIS's NoCaps files: ``image_id`` is the record's ``img_id`` (an int,
    as LAVIS's ``NoCapsEvalDataset``), captions the record's ``caption`` if any."""
    files = annotation_files(source, split, info, run_cfg, NOCAPS_FORMAT)
    root = image_root(source, build_info, run_cfg, required=True)
    records = []
    for path in files:
        for i, ann in enumerate(_records_of(path, source, NOCAPS_FORMAT)):
            _require(ann, ("image", "img_id"), path, i, source, NOCAPS_FORMAT)
            img_id = ann["img_id"]
            records.append({"image": ann["image"], "caption": ann.get("caption") or [],
                            "image_id": int(img_id) if str(img_id).lstrip("-").isdigit() else img_id})
    return records, root


def read_custom(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                run_cfg: Mapping[str, Any], source: str = "caption_custom") -> Tuple[List[Dict[str, Any]], Optional[Path]]:
    """Records of local JSON / JSONL / CSV annotation files with configurable column names
    (``source``: the builder name errors mention)."""
    image_key = option("image_key", info, build_info, "image")
    caption_key = option("caption_key", info, build_info, "caption")
    id_key = option("image_id_key", info, build_info)
    files = annotation_files(source, split, info, run_cfg, CUSTOM_FORMAT)
    root = image_root(source, build_info, run_cfg, required=False)
    records = []
    for path in files:
        rows = _read_rows(path, option("format", info, build_info), option("csv_delimiter", info, build_info), source)
        for i, row in enumerate(rows):
            keys = (image_key, caption_key) + ((id_key,) if id_key else ())
            _require(row, keys, path, i, source,
                     "column names set by build_info.image_key / caption_key / image_id_key")
            image = str(row[image_key])
            # without an image root, images sit next to their annotation file
            source_image = image if root is not None or Path(image).is_absolute() else str(path.parent / image)
            records.append({"image": source_image, "caption": _caption_cell(row[caption_key]),
                            "image_id": row[id_key] if id_key else image})
    return records, root


def _read_rows(path: Path, fmt: Optional[str], delimiter: Optional[str],
               source: str = "caption_custom") -> List[Mapping[str, Any]]:
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt == "json":
        data = _read_json(path, source, CUSTOM_FORMAT)
        if isinstance(data, Mapping) and isinstance(data.get("annotations"), list):
            data = data["annotations"]
        if not isinstance(data, list):
            raise ValueError(f"{source}: {path} holds a {type(data).__name__}; expected {CUSTOM_FORMAT}")
        return data
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{source}: {path} line {n} is not valid JSON ({err})") from None
        return rows
    if fmt in ("csv", "tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter=delimiter or ("\t" if fmt == "tsv" else ",")))
    raise ValueError(f"{source}: cannot tell the format of {path} (suffix '{path.suffix}'); "
                     "name it .json/.jsonl/.csv/.tsv or set build_info.format")


def _caption_cell(value: Any) -> Any:
    """A caption cell: a string, a list, or (from CSV) a JSON-encoded list such as '["a", "b"]'."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list):
            return [str(c) for c in parsed]
    return value


def _require(record: Any, keys, path: Path, index: int, source: str, expected: str) -> None:
    if not isinstance(record, Mapping):
        raise ValueError(f"{source}: record {index} of {path} is a {type(record).__name__}, not a mapping; expected {expected}")
    for key in keys:
        if record.get(key) in (None, ""):
            raise ValueError(f"{source}: record {index} of {path} has no '{key}' "
                             f"(it has: {', '.join(map(str, record)) or 'nothing'}); expected {expected}")
