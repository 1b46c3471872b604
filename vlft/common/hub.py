"""A model, tokenizer or config that transformers could not fetch, as one line.

Offline, ``from_pretrained("Salesforce/blip-image-captioning-base")`` fails with a
chained ``OSError`` ("We couldn't connect to 'https://huggingface.co' ...") that does
not say which id was wanted: it is only in a stack frame. :func:`unfetchable_model`
finds it there (every transformers and huggingface_hub loader names it
``pretrained_model_name_or_path`` or ``repo_id``), and :func:`offline_message` says
what to do: which id, which cache folder and variable, and what to place where.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Optional

_ID_NAMES = ("pretrained_model_name_or_path", "path_or_repo_id", "repo_id")
_DATASET = re.compile(r"Couldn't reach '([^']+)' on the Hub")


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_hub_failure(err: BaseException) -> bool:
    for e in _chain(err):
        module = type(e).__module__ or ""
        if module.startswith("huggingface_hub") or "huggingface.co" in str(e):
            return True
        if isinstance(e, OSError) and ("is not a local folder" in str(e) or "does not appear to have" in str(e)):
            return True
    return False


def _requested_id(err: BaseException) -> Optional[str]:
    """The id the outermost loader in ``err``'s traceback was asked for."""
    for e in _chain(err):
        tb = e.__traceback__
        while tb is not None:
            local = tb.tb_frame.f_locals
            for name in _ID_NAMES:
                value = local.get(name)
                if isinstance(value, (str, os.PathLike)) and str(value):
                    return str(value)
            tb = tb.tb_next
    return None


def unfetchable_model(err: BaseException) -> Optional[str]:
    """The model id ``err`` failed to fetch, or None when ``err`` is not such a failure."""
    if not isinstance(err, (OSError, ValueError)) or not _is_hub_failure(err):
        return None
    return _requested_id(err) or "?"


def unfetchable_dataset(err: BaseException) -> Optional[str]:
    """The HF ``datasets`` id ``err`` failed to fetch, or None."""
    for e in _chain(err):
        match = _DATASET.search(str(e))
        if match and (type(e).__module__ or "").startswith(("datasets", "builtins", "requests")):
            return match.group(1)
    return None


def dataset_offline_message(dataset_id: str) -> str:
    from datasets import config

    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
    why = "offline mode is set" if offline else "the Hugging Face hub cannot be reached"
    return (f"cannot fetch the dataset '{dataset_id}': {why} and it is not in the datasets cache "
            f"{config.HF_DATASETS_CACHE} (set by $HF_HOME or $HF_DATASETS_CACHE); on a machine with network load it "
            f"once (datasets.load_dataset('{dataset_id}')) and copy that cache folder here, or save it with "
            "save_to_disk() / as JSON files and point the dataset's build_info at them")


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline_message(model_id: str, err: BaseException) -> str:
    local = Path(model_id).expanduser()
    if local.is_dir():
        return (f"cannot load the model or tokenizer in {local}: it lacks files transformers needs "
                f"({str(err).splitlines()[0]}); save it with save_pretrained(), which writes config.json, the "
                "weights and the tokenizer files")
    if model_id.startswith(("/", "./", "~")) or os.sep in model_id and model_id.count("/") > 1:
        return f"no model folder {local}: the path does not exist (check the config key that names it)"
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached"
    return (f"cannot fetch '{model_id}': {why} and it is not in the cache {hub_cache()} (set by $HF_HOME or "
            f"$HF_HUB_CACHE); on a machine with network run `hf download {model_id}` and copy that cache folder "
            f"here, or save the model with save_pretrained() to a folder and set the config key that names "
            f"'{model_id}' to that folder")
