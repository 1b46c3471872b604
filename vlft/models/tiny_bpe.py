"""Tiny byte-level BPE tokenizers for the tiny model types, trained offline.

Deterministic: the same corpus, size and special tokens give the same vocabulary, so a
tokenizer is built once per machine and cached under ``$VLFT_CACHE_ROOT/tokenizers/``
(a temporary folder when that is not writable), in a folder named by a hash of
everything that defines it. Florence-2's (a ``BartTokenizer``) and MiniGPT4-Qwen's (a
``Qwen2Tokenizer``) are built here from their own corpora.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple


def train_byte_level_bpe(corpus: Sequence[str], vocab_size: int, specials: Sequence[str]) -> Tuple[Dict[str, int], List[tuple]]:
    """``(vocab, merges)`` of a byte-level BPE trained on ``corpus``, ``specials`` first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(corpus), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _cache_base() -> Path:
    root = Path(os.environ.get("VLFT_CACHE_ROOT") or Path.home() / ".cache" / "vlft").expanduser()
    for base in (root / "tokenizers", Path(tempfile.gettempdir()) / "vlft_tokenizers"):
        try:
            base.mkdir(parents=True, exist_ok=True)
            if os.access(base, os.W_OK):
                return base
        except OSError:
            continue
    raise OSError("no writable folder for the tiny tokenizers (set VLFT_CACHE_ROOT)")


def cached_tokenizer_dir(name: str, defining: Any, build: Callable[[], Any]) -> Path:
    """The folder of tokenizer ``name``, built by ``build()`` on first use; ``defining`` (JSON)
    is everything the tokenizer depends on (its hash names the folder)."""
    digest = hashlib.sha1(json.dumps(defining).encode()).hexdigest()[:12]
    out = _cache_base() / f"{name}_{digest}"
    if not (out / "tokenizer_config.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        build().save_pretrained(tmp)
        try:
            os.replace(tmp, out)  # atomic: a concurrent builder's identical copy may already be there
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
