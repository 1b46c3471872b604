"""Small helpers shared across the package: paths (data, checkpoints, the cache root),
seeding, RNG states."""
from __future__ import annotations

import os
import random
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch


def config_root() -> Path:
    """The directory holding the shipped ``configs/`` (installed as ``vlft.configs``)."""
    return Path(str(resources.files("vlft.configs")))


def resolve_config_file(path: str) -> Path:
    """Resolve a default-YAML path as written in ``PRETRAINED_MODEL_CONFIG_DICT`` /
    ``DATASET_CONFIG_DICT``: absolute paths and files that exist relative to the working
    directory are kept; other ``configs/...`` paths point into the shipped configs.
    (Plugins outside the working directory should build absolute paths from ``__file__``.)"""
    p = Path(path)
    if p.is_absolute() or (Path.cwd() / p).is_file():  # a user's own configs/ tree comes first
        return p
    parts = p.parts
    if parts and parts[0] == "configs":
        return config_root().joinpath(*parts[1:])
    return Path.cwd() / p


def cache_root(run_cfg: Optional[Mapping[str, Any]] = None) -> Path:
    """Root for relative data and model paths: ``run.cache_root``, else
    ``$VLFT_CACHE_ROOT``, else ``~/.cache/vlft``. Never a hard-coded site path."""
    configured = run_cfg.get("cache_root") if run_cfg else None
    root = configured or os.environ.get("VLFT_CACHE_ROOT") or Path.home() / ".cache" / "vlft"
    return Path(root).expanduser()


def resolve_data_path(path: str, run_cfg: Optional[Mapping[str, Any]] = None) -> Path:
    """A data path from ``build_info``: absolute or relative to the working directory
    when it exists there, else relative to the cache root (LAVIS's convention)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return cache_root(run_cfg) / p


#: the model keys that hold a checkpoint location, each with the flag that turns it on
#: (None: used whenever set); keys ending in ``_pretrained`` / ``_checkpoint`` count too
MODEL_PATH_KEYS = {"pretrained": "load_pretrained", "finetuned": "load_finetuned", "vit_pretrained": None}
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def resolve_model_path(path: str, run_cfg: Optional[Mapping[str, Any]] = None) -> str:
    """A checkpoint location as LAVIS users write it, made local:

    - ``https://...`` / ``http://...``: downloaded once into ``<cache root>/checkpoints/``
      (see vlft/common/download.py) and that file's path returned;
    - absolute, or existing relative to the working directory: kept;
    - relative and present under the cache root: that path;
    - relative checkpoint file (``.pth``, ``.safetensors``, ...) present nowhere: the path
      under the cache root, so the loader's "not found" names where it should be;
    - anything else (a Hugging Face repo id such as ``Salesforce/blip2-opt-2.7b``): kept.
    """
    from vlft.common.download import download_cached, is_url

    if is_url(path):
        return str(download_cached(path, cache_root(run_cfg)))
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return str(p)
    under_root = cache_root(run_cfg) / p
    if under_root.exists() or p.suffix in _CHECKPOINT_SUFFIXES:
        return str(under_root)
    return path


def resolve_model_paths(model_cfg: Any, run_cfg: Optional[Mapping[str, Any]] = None) -> Any:
    """A copy of the ``model:`` section with every checkpoint location in it made local
    (``resolve_model_path``); a location whose ``load_*`` flag is off is left alone, so a
    LAVIS YAML's unused ``finetuned`` URL is never downloaded."""
    from omegaconf import DictConfig, OmegaConf

    out = OmegaConf.create(OmegaConf.to_container(model_cfg)) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    for key in list(out.keys()):
        value = out[key]
        is_path_key = key in MODEL_PATH_KEYS or str(key).endswith(("_pretrained", "_checkpoint"))
        flag = MODEL_PATH_KEYS.get(key)
        if not is_path_key or not isinstance(value, str) or not value or (flag and not out.get(flag, False)):
            continue
        out[key] = resolve_model_path(value, run_cfg)
    return out


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG this process uses, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024:
            return f"{n:.0f}{unit}"
        n /= 1024
    return f"{n:.0f}PB"
