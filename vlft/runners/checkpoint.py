"""One checkpoint format, one loader.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)``: ``model`` (trainable parameters and buffers by
default, everything with ``run.save_full``), ``optimizer``, ``lr_sched``, ``strategy``
(GradScaler), ``rng`` (one entry per rank), ``progress`` (step, data position, best
metric, early-stopping count) and ``config`` (the merged YAML). DeepSpeed adds its own
sharded optimizer state in a ``<name>.ds/`` folder beside the file. Writes go to a
temporary name and are renamed into place, so a crash never leaves a torn file; the
temporary files a killed run leaves are removed when training starts again.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from vlft.common.utils import human_bytes

logger = logging.getLogger(__name__)
FORMAT = "vlft-checkpoint-v1"
LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_best.pth"


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written folder into place (DeepSpeed shards)."""
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dst.parent)


_TEMP = re.compile(r"^\..+\.tmp-(\d+)$")  # atomic_save's (and log.jsonl's) temporary names


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def remove_stale_temp_files(run_dir: Union[str, os.PathLike]) -> List[Tuple[Path, int]]:
    """Remove what killed writes left in ``run_dir``: ``.<name>.tmp-<pid>`` files of
    processes no longer alive, and ``<folder>.old`` of :func:`atomic_replace_dir` (put
    back in place when the new folder never arrived). Returns (path, bytes) removed."""
    root = Path(run_dir)
    removed: List[Tuple[Path, int]] = []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        m = _TEMP.match(path.name)
        if m and not _pid_alive(int(m.group(1))):
            size = _size(path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append((path, size))
        elif path.is_dir() and path.name.endswith(".old"):
            live = path.with_name(path.name[: -len(".old")])
            if live.exists():
                size = _size(path)
                shutil.rmtree(path, ignore_errors=True)
                removed.append((path, size))
            else:  # the crash came between the two renames: the old folder is the only copy
                os.replace(path, live)
                logger.warning("restored %s from %s (an interrupted replace)", live, path.name)
    for path, size in removed:
        logger.info("removed stale temporary %s (%s)", path, human_bytes(size))
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def model_state(model: nn.Module, full: bool = False, state: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """The model's weights to save: trainable parameters and buffers, or everything.
    ``state`` is the model's state dict when the caller already has it (e.g. gathered by DeepSpeed)."""
    state = model.state_dict() if state is None else state
    if full:
        return state
    # remove_duplicate=False: a tied weight (BLIP's decoder output = word embeddings) is
    # frozen under every name it has, not only the first
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in state.items() if k not in frozen}


def read(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``, or safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {"model": load_file(str(path))}
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors say little; name the file and the rule
        raise RuntimeError(f"cannot load {path} as a weights-only checkpoint ({type(err).__name__}: {err})") from err


def load_model_weights(model: nn.Module, source: Union[str, os.PathLike, Mapping[str, Any]], strict_trainable: bool = True) -> Tuple[list, list]:
    """Load weights on top of the model's current (e.g. pretrained) ones.

    Accepts a vlft checkpoint, a LAVIS-style ``{"model": state_dict}`` file, a bare
    state dict or a safetensors file. Keys the checkpoint lacks keep their current
    values (a trainable-only checkpoint leaves the frozen pretrained weights alone);
    keys the model lacks are an error, since that means the wrong model or a renamed
    module. Returns ``(missing, unexpected)``.
    """
    ckpt = read(source) if not isinstance(source, Mapping) else source
    state = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else ckpt
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    if unexpected and strict_trainable:
        raise KeyError(
            f"checkpoint has {len(unexpected)} key(s) this {type(model).__name__} lacks, e.g. {unexpected[:5]}; "
            "is it a checkpoint of another model or model_type?"
        )
    shape_errors = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if shape_errors:
        raise ValueError("checkpoint shapes differ from the model's: " + "; ".join(shape_errors[:5]))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if missing:
        logger.info("loaded %d tensors; %d keep their current values (frozen or not in checkpoint)", len(state) - len(unexpected), len(missing))
    return missing, unexpected


def find_resume(output_dir: Union[str, os.PathLike]) -> Optional[Path]:
    """The newest ``checkpoint_latest.pth`` under ``output_dir`` (itself or a run folder in it)."""
    root = Path(output_dir)
    candidates = [p for p in [root / LATEST, *root.glob(f"*/{LATEST}")] if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None
