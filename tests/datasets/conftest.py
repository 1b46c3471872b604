"""Small on-disk captioning data for the dataset tests: tiny PNG/JPEG images, a
corrupt file (random bytes named .jpg) and a path that does not exist."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from omegaconf import OmegaConf
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "grey": (128, 128, 128)}
PROCESSORS = {
    "vis_processor": {"train": {"name": "simple_image_train", "image_size": 16},
                      "eval": {"name": "simple_image_eval", "image_size": 16}},
}


def image_bytes(colour: str, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (12, 10), COLOURS[colour])
    (img.convert(mode) if mode != "RGB" else img).save(buf, format=fmt)
    return buf.getvalue()


def corrupt_bytes(n: int = 300) -> bytes:
    return bytes((i * 97 + 13) % 256 for i in range(n))  # "random", but the same every run


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """``images/`` with red.png, green.jpg, blue.png (RGB), grey.png (mode L), bad.jpg
    (random bytes); ``missing.jpg`` is referenced by tests but never written."""
    root = tmp_path / "images"
    root.mkdir()
    (root / "red.png").write_bytes(image_bytes("red"))
    (root / "green.jpg").write_bytes(image_bytes("green", "JPEG"))
    (root / "blue.png").write_bytes(image_bytes("blue"))
    (root / "grey.png").write_bytes(image_bytes("grey", mode="L"))
    (root / "bad.jpg").write_bytes(corrupt_bytes())
    return root


def build(name: str, cfg: Dict[str, Any], run_cfg: Optional[Dict[str, Any]] = None, processors: bool = True):
    """Datasets of builder ``name`` made the way a task makes them: registry -> builder -> splits."""
    from vlft.common.registry import registry

    cfg = {**(PROCESSORS if processors else {}), **cfg}
    builder = registry.get_builder_class(name)(OmegaConf.create(cfg), run_cfg=run_cfg or {})
    return builder.build_datasets()
