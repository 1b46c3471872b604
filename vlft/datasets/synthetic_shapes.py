"""A deterministic synthetic image-text dataset for demos and tests.

Scene ``i`` of seed ``s`` always has the same two coloured shapes on a light
background and the caption that describes them, e.g. "a red circle to the left of a
blue square". Nothing is downloaded; images are drawn with PIL on the fly.
"""
from __future__ import annotations

import random
from typing import Dict, List, Tuple

from PIL import Image, ImageDraw

COLOURS: Dict[str, Tuple[int, int, int]] = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
SHAPES = ("circle", "square", "triangle")
CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]  # the left object's class (9)


def _draw(draw: ImageDraw.ImageDraw, shape: str, colour, box) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _objects(rng: random.Random) -> list:
    return [(rng.choice(list(COLOURS)), rng.choice(SHAPES)) for _ in range(2)]


def _caption(objects) -> str:
    (c0, s0), (c1, s1) = objects
    return f"a {c0} {s0} to the left of a {c1} {s1}"


def scene_caption(index: int, seed: int = 0) -> str:
    """The caption of scene ``index`` without drawing its image (the first draws of the
    scene's RNG decide the objects)."""
    return _caption(_objects(random.Random(seed * 1_000_003 + index)))


def scene_objects(index: int, seed: int = 0) -> List[Tuple[str, str]]:
    """The ``(colour, shape)`` of scene ``index``'s left and right objects, without drawing it."""
    return [tuple(o) for o in _objects(random.Random(seed * 1_000_003 + index))]


def scene_questions(index: int, seed: int = 0) -> List[Tuple[str, str]]:
    """Questions about scene ``index`` and their answers (the synthetic VQA data)."""
    (c0, s0), (c1, s1) = _objects(random.Random(seed * 1_000_003 + index))
    return [
        ("what colour is the left shape?", c0),
        ("what shape is on the right?", s1),
        (f"is there a {c1} {s1}?", "yes"),
        (f"is the left shape a {s1}?", "yes" if s0 == s1 else "no"),
    ]


#: every word of the synthetic questions, answers and the usual BLIP / BLIP-2 prompts
QA_TEXT = (
    "what colour is the left shape ? what shape is on the right ? is there a is the left shape a "
    "yes no question : short answer : a photo of a picture of"
)


def make_scene(index: int, seed: int = 0, image_size: int = 64) -> dict:
    """Image, caption and left-object class of scene ``index``."""
    rng = random.Random(seed * 1_000_003 + index)
    objects = _objects(rng)
    image = Image.new("RGB", (image_size, image_size), tuple(rng.randint(225, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    half = image_size // 2
    size = int(image_size * rng.uniform(0.28, 0.4))
    for slot, (colour, shape) in enumerate(objects):
        x0 = slot * half + rng.randint(1, max(half - size - 1, 1))
        y0 = rng.randint(1, image_size - size - 1)
        _draw(draw, shape, COLOURS[colour], (x0, y0, x0 + size, y0 + size))
    (c0, s0), _ = objects
    return {"image": image, "caption": _caption(objects), "label": CLASSES.index(f"{c0} {s0}")}


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


def shapes_tokenizer(extra_text=("a picture of",)):
    """A word-level tokenizer trained on the synthetic captions (the demo's ``tiny`` BLIP
    uses it instead of BERT's 30k vocabulary). Deterministic: the same vocabulary on
    every machine. Special tokens follow BLIP's BERT tokenizer: [CLS] ... [SEP], with
    [DEC] as the decoder's start token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [scene_caption(i) for i in range(200)] + list(extra_text)
    corpus += [f"a {c} {s}" for c in COLOURS for s in SHAPES]  # every word, whatever the sample
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]")


def shapes_lm_tokenizer(style: str = "opt"):
    """A word-level tokenizer over the synthetic captions, questions and prompts for the
    ``tiny`` BLIP-2 language models, with the special tokens of the real ones:
    ``opt`` as OPT's (``</s>`` is bos and eos, prepended to every text, ``<pad>``) and
    ``t5`` as T5's (``<pad>`` = 0 also starts the decoder, ``</s>`` appended)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in ("opt", "t5"):
        raise ValueError(f"shapes_lm_tokenizer style must be 'opt' or 't5', got {style!r}")
    specials = ["<s>", "<pad>", "</s>", "<unk>"] if style == "opt" else ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [scene_caption(i) for i in range(200)] + [QA_TEXT, "0 1 2 3 4 5 6 7 8 9 . ,"]
    corpus += [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1))
    eos_id = tok.token_to_id("</s>")
    if style == "opt":
        tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", eos_id)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                       unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
