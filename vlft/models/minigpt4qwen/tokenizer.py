"""The LLM's tokenizer for ``minigpt4qwen``: a HF id / directory, or ``tiny``.

``tiny`` is a small byte-level BPE trained offline and deterministically on the
synthetic shapes' captions, questions and the chat words, wrapped as transformers'
``Qwen2Tokenizer`` with Qwen's special tokens (``<|endoftext|>`` = 0 is the padding,
``<|im_start|>`` = 1, ``<|im_end|>`` = 2 the eos, ``<|image_pad|>`` = 3 the image
placeholder) and the ChatML chat template with generation blocks
(``vlft.processors.chat.CHAT_TEMPLATES["chatml"]``). It is built once per machine and
cached under ``$VLFT_CACHE_ROOT/tokenizers/`` (a temporary folder when that is not
writable); the folder name carries a hash of everything that defines it.

:func:`load_tokenizer` also makes sure the image token exists: a vocabulary without it
(a Llama or InternLM chat model) gets it as an added special token, and the caller
resizes the LLM's embeddings (the row is never used as an embedding: the projected
queries replace it).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from vlft.models.tiny_bpe import cached_tokenizer_dir, train_byte_level_bpe

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"]
TINY_VOCAB_SIZE = 480  # BPE entries with the specials (256 bytes + merges)


def _tiny_corpus() -> List[str]:
    from vlft.datasets.synthetic_chat import chat_questions
    from vlft.datasets.synthetic_shapes import COLOURS, QA_TEXT, SHAPES, scene_caption, scene_questions

    text = [scene_caption(i) for i in range(200)] + [QA_TEXT]
    text += [f"{q} {a}" for i in range(50) for q, a in scene_questions(i) + chat_questions(i)]
    text += [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    text += ["system\nYou are a helpful assistant.", "user\n", "assistant\n", "<Img></Img> <Img> </Img>",
             "Describe the image briefly. Describe this image in a few words. What is in the image?",
             "0 1 2 3 4 5 6 7 8 9 . , : ; ! ? ' \" ( ) - the of and in on with to is an it this that yes no"]
    return text


def _build_tiny():
    from transformers import Qwen2Tokenizer

    from vlft.processors.chat import CHAT_TEMPLATES

    vocab, merges = train_byte_level_bpe(_tiny_corpus(), TINY_VOCAB_SIZE, SPECIALS)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<|image_pad|>"])
    tok.chat_template = CHAT_TEMPLATES["chatml"]
    return tok


def tiny_tokenizer_dir() -> Path:
    """The folder of the tiny tokenizer (built on first use)."""
    from vlft.processors.chat import CHAT_TEMPLATES

    defining = [TINY_VOCAB_SIZE, SPECIALS, CHAT_TEMPLATES["chatml"], _tiny_corpus()]
    return cached_tokenizer_dir("qwen_tiny", defining, _build_tiny)


def load_tokenizer(name: str, image_token: str, trust_remote_code: bool = False, pad_token: Optional[str] = None):
    """``tiny`` or a HF tokenizer id / directory, with ``image_token`` in its vocabulary
    and a padding token (``pad_token``, else the tokenizer's, else Qwen v1's ``eod``)."""
    from transformers import AutoTokenizer

    source = str(tiny_tokenizer_dir()) if name == "tiny" else name
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if image_token not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [image_token]})
    if pad_token:
        tok.pad_token = pad_token
    return tok


def pad_token_id(tok) -> int:
    """The id to pad with: the tokenizer's pad token, Qwen v1's ``eod_id`` (its remote
    tokenizer has no pad token; the reference pads with it), else eos."""
    for value in (getattr(tok, "pad_token_id", None), getattr(tok, "eod_id", None), getattr(tok, "eos_token_id", None)):
        if value is not None:
            return int(value)
    raise ValueError(f"{type(tok).__name__} has no pad, eod or eos token; set model.pad_token")
