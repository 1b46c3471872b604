"""Reading one image, from whatever a data source holds, without ever raising.

Every captioning source (LAVIS JSON, custom files, Hugging Face ``datasets``,
webdataset shards) hands its image to :func:`load_image`. A file that is missing,
truncated or not an image gives ``None`` and one warning naming the file and the
reason; the dataset then returns ``None`` for the item and the runner drops and
counts it (``vlft.runners.data.SkippingCollate``), stopping past
``run.max_bad_sample_fraction`` instead of crashing hours into a run.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Set, Union

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

ImageSource = Union[str, os.PathLike, bytes, bytearray, io.IOBase, Image.Image, dict, Callable[[], Any]]

# Each process warns once per file: a bad file met every epoch would otherwise
# bury the log. DataLoader workers are processes, so each may warn once.
_warned: Set[str] = set()


def load_image(source: ImageSource, name: Optional[str] = None) -> Optional[Image.Image]:
    """An RGB ``PIL.Image`` from ``source``, or ``None`` (with a warning) if it cannot be read.

    ``source`` is one of: a file path; encoded bytes; a binary file-like object; a
    ``PIL.Image``; a Hugging Face undecoded image ``{"bytes": ..., "path": ...}``
    (``datasets.Image(decode=False)``); or a zero-argument callable returning one of
    these (a lazy reference, e.g. one row of a Hugging Face dataset). ``name`` is used
    in the warning when the source is not a path.
    """
    label = name or _describe(source)
    try:
        if callable(source) and not isinstance(source, Image.Image):
            source = source()
        return _decode(source)
    except FileNotFoundError:
        _warn_once(label, "missing file")
    except IsADirectoryError:
        _warn_once(label, "is a directory, not an image file")
    except UnidentifiedImageError:
        _warn_once(label, "not an image (PIL cannot identify its format)")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL reports truncated and corrupt data as OSError ("image file is truncated"),
        # SyntaxError (broken PNG chunks) or ValueError
        _warn_once(label, f"truncated or corrupt ({type(err).__name__}: {err})")
    except Exception as err:  # a lazy source (a dataset row, a remote file) failing in its own way
        _warn_once(label, f"could not be read ({type(err).__name__}: {err})")
    return None


def _decode(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        source.load()
        return source if source.mode == "RGB" else source.convert("RGB")
    if isinstance(source, dict):  # datasets.Image(decode=False)
        data, path = source.get("bytes"), source.get("path")
        if data is not None:
            return _decode(bytes(data))
        if path:
            return _decode(path)
        raise ValueError("the image record holds neither bytes nor a path")
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:  # closes the handle PIL's lazy open would keep
            return _open(f)
    if hasattr(source, "read"):
        return _open(source)
    raise TypeError(f"cannot read an image from a {type(source).__name__}")


def _open(f) -> Image.Image:
    with Image.open(f) as img:
        img.load()  # decode now: truncation shows here, not later inside a transform
        return img.convert("RGB")


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source))
    if isinstance(source, dict) and source.get("path"):
        return str(source["path"])
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes of image data>"
    return repr(source) if callable(source) else f"<{type(source).__name__}>"


def _warn_once(label: str, reason: str) -> None:
    if label in _warned:
        return
    _warned.add(label)
    logger.warning("skipping image %s: %s", label, reason)
