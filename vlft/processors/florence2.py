"""Florence-2 text and image processing: task prompts, ``<loc_N>`` box quantisation,
parsing generated text back into boxes, and image transforms that move boxes.

Reference: Xiao et al., "Florence-2: Advancing a Unified Representation for a Variety of
Vision Tasks", CVPR 2024; transformers' ``Florence2Processor`` / ``Florence2PostProcessor``
(the prompt tables below are the same, checked by the tests).

**Prompts.** A task token is rewritten into the sentence the model was trained on
(``<OD>`` -> "Locate the objects with category name in the image."); a task with input
takes it after the token (``<CAPTION_TO_PHRASE_GROUNDING>a red circle``); a task token
without input followed by more text is a ValueError, as in transformers; any other text
is used as it is.

**Quantisation** (as transformers and the original code): a pixel coordinate ``x`` of an
image ``W`` pixels wide becomes bin ``clamp(floor(x / (W / 1000)), 0, 999)``, i.e.
``<loc_bin>``; boxes are ``[x0, y0, x1, y1]`` in the (augmented) image's pixels.

**Dequantisation: one convention, the bin centre as a float**: ``(bin + 0.5) * W / 1000``.
This is what the original ``microsoft/Florence-2`` remote code returns; transformers'
native ``post_process_generation`` truncates the same value to an int, which moves boxes
by up to a pixel and lowers small-object AP. Ground truth given as loc tokens
(``florence_jsonl``) is dequantised the same way, so a prediction that repeats the target
tokens has IoU 1.

**Parsing** (``parse_boxes``): text is split into segments ``label<loc_a><loc_b>...``; each
complete group of four loc tokens is a box of that label (one label with 8 or 12 loc
tokens is 2 or 3 boxes, as transformers reads it). Unlike transformers, nothing
malformed is dropped silently: a trailing incomplete group (a label with 3 loc tokens),
an empty label, an inverted box (``x1 < x0`` or ``y1 < y0``), text without boxes, and
an empty output are counted in ``Parsed.malformed``; the remaining boxes are kept.

Image processors ``florence2_image_train`` / ``florence2_image_eval``: resize to
``image_size`` square (bicubic, as Florence-2's ``CLIPImageProcessor``, 768 for the real
checkpoints) and normalise with the ImageNet mean / std it uses. The train processor's
augmentation (off by default) moves boxes with the image through
``torchvision.transforms.v2`` and ``tv_tensors.BoundingBoxes``: horizontal flip
(``hflip``, a probability), random resized crop (``crop_scale: [min, max]`` area
fraction: scale jitter and crop in one) after which boxes are clamped and those left
outside (under ``min_box_size`` pixels) dropped with their labels. Samples whose prompt
or target says "left" or "right" are never flipped (see ``mentions_sides``).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from vlft.common.registry import registry
from vlft.processors.base_processor import BaseProcessor
from vlft.processors.lazy_torchvision import v2

NUM_BINS = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: task token -> the sentence the model reads (tasks without input)
TASK_PROMPTS: Dict[str, str] = {
    "<OCR>": "What is the text in the image?",
    "<OCR_WITH_REGION>": "What is the text in the image, with regions?",
    "<CAPTION>": "What does the image describe?",
    "<DETAILED_CAPTION>": "Describe in detail what is shown in the image.",
    "<MORE_DETAILED_CAPTION>": "Describe with a paragraph what is shown in the image.",
    "<OD>": "Locate the objects with category name in the image.",
    "<DENSE_REGION_CAPTION>": "Locate the objects in the image, with their descriptions.",
    "<REGION_PROPOSAL>": "Locate the region proposals in the image.",
}
#: task token -> sentence with the text after the token as ``{input}``
TASK_PROMPTS_WITH_INPUT: Dict[str, str] = {
    "<CAPTION_TO_PHRASE_GROUNDING>": "Locate the phrases in the caption: {input}",
    "<REFERRING_EXPRESSION_SEGMENTATION>": "Locate {input} in the image with mask",
    "<REGION_TO_SEGMENTATION>": "What is the polygon mask of region {input}",
    "<OPEN_VOCABULARY_DETECTION>": "Locate {input} in the image.",
    "<REGION_TO_CATEGORY>": "What is the region {input}?",
    "<REGION_TO_DESCRIPTION>": "What does the region {input} describe?",
    "<REGION_TO_OCR>": "What text is in the region {input}?",
}
#: tasks whose answers are label + boxes
BOX_TASKS = ("<OD>", "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", "<CAPTION_TO_PHRASE_GROUNDING>",
             "<OPEN_VOCABULARY_DETECTION>")
_LOC = re.compile(r"<loc_(\d+)>")
_PIECES = re.compile(r"(<loc_\d+>)")
_SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)
#: markup the model may emit around answers (stripped before parsing, as transformers does)
_MARKUP = ("<s>", "</s>", "<pad>", "<od>", "</od>", "<ground>", "<obj>", "<box>", "</box>", "<bbox>", "</bbox>")


def task_token(prompt: str) -> Optional[str]:
    """The task token a prompt starts with (``"<OD>"``), or ``None`` for free text."""
    for token in (*TASK_PROMPTS, *TASK_PROMPTS_WITH_INPUT):
        if prompt.startswith(token):
            return token
    return None


def construct_prompt(prompt: str) -> str:
    """The text the model reads for ``prompt`` (see the module docstring)."""
    for token, sentence in TASK_PROMPTS.items():
        if token in prompt:
            if prompt != token:
                raise ValueError(f"Florence-2 task {token} takes no input, so the prompt must be exactly {token!r}, "
                                 f"got {prompt!r}; tasks with input: {', '.join(TASK_PROMPTS_WITH_INPUT)}")
            return sentence
    for token, sentence in TASK_PROMPTS_WITH_INPUT.items():
        if token in prompt:
            return sentence.format(input=prompt.replace(token, "").strip())
    return prompt


def mentions_sides(*texts: Optional[str]) -> bool:
    """Whether any text says "left" or "right" (a horizontal flip would make it false)."""
    return any(t and _SIDES.search(t) for t in texts)


# ---------------------------------------------------------------------- quantisation
def quantize(boxes: Any, size: Tuple[float, float]) -> torch.Tensor:
    """Pixel boxes ``[N, 4]`` (x0, y0, x1, y1) of an image of ``size = (width, height)``
    to bins 0..999 (floor, clamped), as transformers' ``Florence2PostProcessor.quantize``."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    w, h = float(size[0]), float(size[1])
    scale = torch.tensor([w, h, w, h], dtype=torch.float64) / NUM_BINS
    return (boxes / scale).floor().clamp(0, NUM_BINS - 1).long()


def dequantize(bins: Any, size: Tuple[float, float]) -> torch.Tensor:
    """Bins ``[N, 4]`` to float pixel boxes at the bins' centres: ``(bin + 0.5) * size / 1000``."""
    bins = torch.as_tensor(bins, dtype=torch.float64).reshape(-1, 4)
    w, h = float(size[0]), float(size[1])
    return (bins + 0.5) * torch.tensor([w, h, w, h], dtype=torch.float64) / NUM_BINS


def boxes_to_text(labels: Sequence[str], boxes: Any, size: Tuple[float, float]) -> str:
    """The target text of labelled pixel boxes: ``label<loc_x0><loc_y0><loc_x1><loc_y1>`` per box."""
    bins = quantize(boxes, size).tolist() if len(labels) else []
    if len(bins) != len(labels):
        raise ValueError(f"boxes_to_text: {len(labels)} labels but {len(bins)} boxes")
    return "".join(f"{label}" + "".join(f"<loc_{b}>" for b in box) for label, box in zip(labels, bins))


# ---------------------------------------------------------------------- parsing
@dataclass
class Segment:
    """One ``label<loc>...`` run: the label, its bins, and which pieces (tokens) made it."""

    label: str
    bins: List[int]
    label_pieces: List[int]
    loc_pieces: List[int]


@dataclass
class Parsed:
    """Boxes read from one generated text, and what could not be read."""

    boxes: List[List[float]] = field(default_factory=list)
    labels: List[str] = field(default_factory=list)
    #: per box: indices of the pieces (tokens) of its label and of its four loc tokens
    pieces: List[List[int]] = field(default_factory=list)
    malformed: Counter = field(default_factory=Counter)


def text_pieces(text: str) -> List[str]:
    """A text split into ``<loc_N>`` tokens and the text between them."""
    return [p for p in _PIECES.split(text) if p]


def segments(pieces: Sequence[str]) -> List[Segment]:
    """Group pieces into segments: the text before a run of loc tokens, and that run."""
    out: List[Segment] = []
    label_parts: List[Tuple[int, str]] = []
    current: Optional[Segment] = None
    for i, piece in enumerate(pieces):
        loc = _LOC.fullmatch(piece)
        if loc:
            if current is None:
                current = Segment("".join(p for _, p in label_parts), [], [j for j, _ in label_parts], [])
                out.append(current)
                label_parts = []
            current.bins.append(int(loc.group(1)))
            current.loc_pieces.append(i)
        elif piece:  # an empty piece is a special token (<s>, </s>, padding): no part of a label
            current = None
            label_parts.append((i, piece))
    trailing = "".join(p for _, p in label_parts)
    for markup in _MARKUP:
        trailing = trailing.replace(markup, "")
    if trailing.strip():
        out.append(Segment(trailing, [], [j for j, _ in label_parts], []))
    return out


def _clean(label: str) -> str:
    for markup in _MARKUP:
        label = label.replace(markup, "")
    return label.strip()


def parse_boxes(pieces: Any, image_size: Tuple[float, float]) -> Parsed:
    """Labelled boxes (original-image pixels, bin centres) from generated text or its pieces."""
    pieces = text_pieces(pieces) if isinstance(pieces, str) else list(pieces)
    parsed = Parsed()
    segs = segments(pieces)
    if not segs:
        parsed.malformed["empty_output"] += 1
        return parsed
    for seg in segs:
        label = _clean(seg.label)
        if not seg.bins:
            parsed.malformed["text_without_box"] += 1
            continue
        if len(seg.bins) % 4:
            parsed.malformed["incomplete_box"] += 1  # e.g. a label followed by 3 loc tokens
        if not label:
            parsed.malformed["empty_label"] += 1
            continue
        n = len(seg.bins) // 4
        boxes = dequantize(seg.bins[: 4 * n], image_size).tolist() if n else []
        for k, box in enumerate(boxes):
            if box[2] < box[0] or box[3] < box[1]:
                parsed.malformed["inverted_box"] += 1
                continue
            parsed.boxes.append(box)
            parsed.labels.append(label)
            parsed.pieces.append(seg.label_pieces + seg.loc_pieces[4 * k: 4 * k + 4])
    return parsed


def post_process_generation(text: str, task: str, image_size: Tuple[float, float]) -> Dict[str, Any]:
    """transformers' ``post_process_generation`` result layout (``{task: answer}``) for
    ``text``, with vlft's float dequantisation; box tasks add ``"malformed"`` counts."""
    token = task_token(task) or task
    if token in BOX_TASKS:
        parsed = parse_boxes(text, image_size)
        return {token: {"bboxes": parsed.boxes, "labels": parsed.labels, "malformed": dict(parsed.malformed)}}
    return {token: clean_text(text)}


def clean_text(text: str) -> str:
    """Generated text without BART's specials and padding (transformers' ``pure_text``)."""
    return text.replace("<s>", "").replace("</s>", "").replace("<pad>", "").strip()


# ---------------------------------------------------------------------- image processors
class _Florence2Image(BaseProcessor):
    def __init__(self, image_size: int = 768, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize = v2.Resize((self.image_size, self.image_size), interpolation=v2.InterpolationMode.BICUBIC,
                                antialias=True)
        self.to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(mean=list(self.mean), std=list(self.std))])

    def __call__(self, image) -> torch.Tensor:
        return self.to_tensor(self.resize(image))

    def with_boxes(self, image, boxes: Any, labels: Sequence[str], allow_flip: bool = True):
        """``(tensor, boxes, labels, (width, height))``: the image resized (no augmentation),
        boxes in the resized image's pixels, with the labels of the boxes that remain."""
        return self._apply(self.resize, image, boxes, labels)

    def _apply(self, transform, image, boxes, labels):
        from torchvision import tv_tensors

        img = v2.functional.to_image(image)
        h, w = img.shape[-2:]
        target = {"boxes": tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                                    format="XYXY", canvas_size=(h, w)),
                  "labels": torch.arange(len(labels))}
        out_img, out = transform(img, target)
        kept = [labels[i] for i in out["labels"].tolist()]
        oh, ow = out_img.shape[-2:]
        return self.to_tensor(out_img), out["boxes"].as_subclass(torch.Tensor), kept, (ow, oh)

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]] = None):
        cfg = cfg or {}
        return cls(image_size=cfg.get("image_size", 768))


@registry.register_processor("florence2_image_eval")
class Florence2ImageEvalProcessor(_Florence2Image):
    """Resize to ``image_size`` square (bicubic) and normalise (ImageNet mean / std)."""


@registry.register_processor("florence2_image_train")
class Florence2ImageTrainProcessor(_Florence2Image):
    """The eval processor plus optional box-aware augmentation (see the module docstring)."""

    def __init__(self, image_size: int = 768, hflip: float = 0.0, crop_scale: Optional[Sequence[float]] = None,
                 min_box_size: float = 1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__(image_size, mean, std)
        if not 0.0 <= float(hflip) <= 1.0:
            raise ValueError(f"florence2_image_train: hflip is a probability in [0, 1], got {hflip}")
        if crop_scale is not None and not (len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1):
            raise ValueError(f"florence2_image_train: crop_scale must be [min, max] with 0 < min <= max <= 1, got {crop_scale}")
        self.hflip, self.crop_scale = float(hflip), crop_scale
        size = (self.image_size, self.image_size)
        bicubic = v2.InterpolationMode.BICUBIC
        geometry = (v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=bicubic, antialias=True)
                    if crop_scale else self.resize)
        tail = [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=float(min_box_size))]
        self.no_flip = v2.Compose([geometry, *tail])
        self.flip = v2.Compose([v2.RandomHorizontalFlip(self.hflip), geometry, *tail]) if self.hflip else self.no_flip

    @property
    def augments(self) -> bool:
        return bool(self.hflip or self.crop_scale)

    def __call__(self, image) -> torch.Tensor:
        if not self.augments:
            return super().__call__(image)
        return self._apply(self.flip, image, torch.zeros(0, 4), [])[0]

    def with_boxes(self, image, boxes: Any, labels: Sequence[str], allow_flip: bool = True):
        return self._apply(self.flip if allow_flip else self.no_flip, image, boxes, labels)

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]] = None):
        cfg = cfg or {}
        crop = cfg.get("crop_scale")
        return cls(image_size=cfg.get("image_size", 768), hflip=cfg.get("hflip", 0.0),
                   crop_scale=list(crop) if crop is not None else None, min_box_size=cfg.get("min_box_size", 1.0))
