"""Florence-2's tokenizer: BART's byte-level BPE plus Florence's 1,024 task and location
tokens and transformers' ``<image>`` placeholder.

- ``florence_tokens()``: the tokens Florence-2's processor adds to BART's vocabulary, in
  its order (``<od>``, ``</od>``, ``<ocr>``, ``</ocr>``, ``<loc_0>`` .. ``<loc_999>``, then
  the 20 region / caption / grounding tokens): 50,265 + 1,024 = 51,289 ids in the real
  checkpoints, ``<image>`` after them (the converted ``florence-community`` repos pad the
  embedding table to 51,328).
- ``tiny_tokenizer()``: a small byte-level BPE trained offline and deterministically on
  the synthetic shapes' words and Florence's task prompts (specials ``<s> <pad> </s>
  <unk> <mask>`` = 0..4 as in BART), wrapped as transformers' ``BartTokenizer`` with the
  tokens above. It is built once per machine and cached under
  ``$VLFT_CACHE_ROOT/tokenizers/`` (a temporary folder when that is not writable); the
  folder name carries a hash of everything that defines it.
- ``load_tokenizer(name)``: ``tiny`` or a HF id / directory; the ``image_token`` the
  processor needs is set either way (reloading with ``extra_special_tokens`` is the one way
  found to keep it across ``save_pretrained`` / ``from_pretrained``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List

from vlft.models.tiny_bpe import cached_tokenizer_dir, train_byte_level_bpe

IMAGE_TOKEN = "<image>"
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_REGION_TOKENS = ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>", "<seg>",
                  "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
                  "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>"]
TINY_VOCAB_SIZE = 600  # BPE entries before Florence's tokens (256 bytes + specials + merges)


def florence_tokens() -> List[str]:
    """The 1,024 tokens Florence-2 adds to BART (spelling ``desciption`` as the original)."""
    return ["<od>", "</od>", "<ocr>", "</ocr>"] + [f"<loc_{i}>" for i in range(1000)] + _REGION_TOKENS


def _tiny_corpus() -> List[str]:
    from vlft.datasets.synthetic_shapes import COLOURS, QA_TEXT, SHAPES, scene_caption
    from vlft.processors.florence2 import TASK_PROMPTS, TASK_PROMPTS_WITH_INPUT

    words = [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    text = [scene_caption(i) for i in range(200)] + [QA_TEXT] + words
    text += list(TASK_PROMPTS.values()) + [p.replace("{input}", "") for p in TASK_PROMPTS_WITH_INPUT.values()]
    text += ["0 1 2 3 4 5 6 7 8 9 . , : ; ! ? ' \" ( ) - the of and in on with to is a an"]
    return text


def _build_tiny():
    from transformers import BartTokenizer

    vocab, merges = train_byte_level_bpe(_tiny_corpus(), TINY_VOCAB_SIZE, BART_SPECIALS)
    tok = BartTokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": florence_tokens()})
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tok


def tiny_tokenizer():
    """The tiny models' tokenizer (deterministic; built once, then loaded from the cache)."""
    defining = [TINY_VOCAB_SIZE, BART_SPECIALS, florence_tokens(), _tiny_corpus()]
    return _with_image_token(str(cached_tokenizer_dir("florence2_tiny", defining, _build_tiny)))


def _with_image_token(source: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, extra_special_tokens={"image_token": IMAGE_TOKEN})
    if IMAGE_TOKEN not in tok.get_vocab():  # an original microsoft/Florence-2 tokenizer: add what its remote code adds
        if "<loc_0>" not in tok.get_vocab():
            tok.add_special_tokens({"additional_special_tokens": florence_tokens()})
        tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
        tok.image_token = IMAGE_TOKEN
    tok.image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    return tok


def load_tokenizer(name: str):
    """``tiny`` (see the module docstring) or a HF tokenizer id / directory."""
    return tiny_tokenizer() if name == "tiny" else _with_image_token(name)
