"""BLIP / BLIP-2 processors, under LAVIS's registry names.

Reference: LAVIS ``lavis/processors/blip_processors.py`` and ``randaugment.py``
(Salesforce, BSD-3-Clause). Same names, config keys and defaults, except:

- ``blip2_image_train`` / ``blip2_image_eval`` default to 224 px (the size the BLIP-2
  checkpoints were trained at; LAVIS's class default is 364, its YAMLs say 224);
- ``blip_image_train`` has a ``rand_augment`` switch (LAVIS always applies it; so do
  we by default). The augmentation is LAVIS's ``RandomAugment(2, 5, ...)`` re-done
  on ``torchvision.transforms.v2.functional`` (see :class:`LavisRandomAugment`) so
  it runs on PIL images and tensors and draws from torch's RNG, which the runner
  seeds per sample;
- text cleaning turns *every* whitespace run (tabs, newlines) into one space and
  strips both ends; LAVIS collapses only runs of two or more and strips only
  spaces and a trailing newline. Otherwise it is LAVIS's regex, character for
  character, so captions and questions match what LAVIS models were trained on.

Every image processor converts its input to 3-channel RGB first (grey, palette and
RGBA PIL images; 1- and 4-channel tensors), then returns a float32 CHW tensor
normalised with the CLIP statistics.
"""
from __future__ import annotations

import inspect
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from PIL import Image

from vlft.common.registry import nearest, registry
from vlft.processors.base_processor import BaseProcessor
from vlft.processors.image import CLIP_MEAN, CLIP_STD, _to_normalised_tensor
from vlft.processors.lazy_torchvision import F, tv_tensors, v2


class _Configurable(BaseProcessor):
    """``from_config`` passes the config keys that ``__init__`` names, nothing else.

    Defaults therefore live in ``__init__`` only, and a misspelt key is an error
    (LAVIS ignores unknown keys, so ``imag_size: 224`` silently trained at 384).
    """

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]] = None):
        return cls(**_init_kwargs(cls, cfg))


def _init_kwargs(cls: type, cfg: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if cfg is None:
        return {}
    try:  # OmegaConf nodes -> plain Python, so ListConfig means become tuples below
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    kwargs = {}
    for key, value in dict(cfg).items():
        if key == "name":  # the registry name that picked this class
            continue
        if key not in accepted:
            hint = nearest(str(key), accepted)
            where = cfg.get("name", cls.__name__)
            raise ValueError(
                f"processor {where}: unknown config key {key!r}"
                + (f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ".")
                + f" Valid keys: {', '.join(accepted)}"
            )
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return kwargs


# --------------------------------------------------------------------------- images
def _to_rgb(image):
    """3-channel RGB, as LAVIS's datasets do with ``Image.open(p).convert("RGB")``."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        channels = image.shape[-3] if image.ndim >= 3 else None
        if channels == 3:
            return image
        if channels == 1:
            out = image.expand(*image.shape[:-3], 3, *image.shape[-2:])
        elif channels == 4:  # drop alpha, as PIL's RGBA -> RGB does
            out = image[..., :3, :, :]
        else:
            raise ValueError(f"expected an image tensor shaped (C, H, W) with C in 1, 3, 4; got {tuple(image.shape)}")
        return tv_tensors.wrap(out, like=image) if isinstance(image, tv_tensors.Image) else out
    raise TypeError(f"expected a PIL image or an image tensor, got {type(image).__name__}")


class LavisRandomAugment:
    """LAVIS's ``RandomAugment(N=2, M=5, augs=[10 ops])`` on torchvision's functional ops.

    Draws ``num_ops`` ops with replacement from LAVIS's list, and applies each with
    probability 0.5 at LAVIS's magnitude for ``level`` (out of 10): rotate by 30°,
    shear by 0.3 (about the top-left corner, as LAVIS's cv2 matrix does) and
    translate by 10 px, each times level/10 with a random sign; brightness and
    sharpness by factor level/10·1.8+0.1 (exactly 1.0, a no-op, at LAVIS's level 5);
    autocontrast, equalize and identity. Geometric ops are bilinear with a grey (128)
    fill, as in LAVIS. Not bit-identical to LAVIS's cv2 kernels; the same op set,
    probabilities and magnitudes. Randomness comes from torch's RNG.
    """

    OPS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize",
           "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

    def __init__(self, num_ops: int = 2, level: float = 5, max_level: float = 10, prob: float = 0.5):
        self.num_ops, self.level, self.max_level, self.prob = num_ops, level, max_level, prob

    def __call__(self, image):
        picks = torch.randint(len(self.OPS), (self.num_ops,)).tolist()
        for op in picks:
            if torch.rand(()).item() > self.prob:
                continue
            image = self._apply(self.OPS[op], image)
        return image

    def _signed(self, scale: float) -> float:
        value = self.level / self.max_level * scale
        return -value if torch.rand(()).item() < 0.5 else value

    def _apply(self, name: str, image):
        fill = _grey_fill(image)
        affine = dict(interpolation=v2.InterpolationMode.BILINEAR, fill=fill)
        if name == "Identity":
            return image
        if name == "AutoContrast":
            return F.autocontrast(image)
        if name == "Equalize":
            return F.equalize(image)
        if name in ("Brightness", "Sharpness"):
            factor = self.level / self.max_level * 1.8 + 0.1
            return (F.adjust_brightness if name == "Brightness" else F.adjust_sharpness)(image, factor)
        if name == "Rotate":
            return F.rotate(image, self._signed(30.0), **affine)
        if name in ("ShearX", "ShearY"):
            degrees = math.degrees(math.atan(self._signed(0.3)))
            shear = [degrees, 0.0] if name == "ShearX" else [0.0, degrees]
            return F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0], **affine)
        offset = self._signed(10.0)
        translate = [offset, 0] if name == "TranslateX" else [0, offset]
        return F.affine(image, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0], **affine)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, level={self.level}/{self.max_level}, prob={self.prob})"


def _grey_fill(image):
    if isinstance(image, Image.Image):
        return (128,) * len(image.getbands())
    value = 128.0 if not image.is_floating_point() else 128.0 / 255.0
    return [value] * image.shape[-3]


def _stats(mean: Optional[Sequence[float]], std: Optional[Sequence[float]]):
    return (CLIP_MEAN if mean is None else tuple(mean)), (CLIP_STD if std is None else tuple(std))


class _BlipImageProcessor(_Configurable):
    def __init__(self, steps: List[Any], mean, std):
        self.transform = v2.Compose([_to_rgb, *steps, *_to_normalised_tensor(*_stats(mean, std))])

    def __call__(self, image) -> torch.Tensor:
        return self.transform(image)


def _train_steps(image_size: int, min_scale: float, max_scale: float, rand_augment: bool) -> List[Any]:
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale <= max_scale, got min_scale={min_scale}, max_scale={max_scale}")
    steps = [
        v2.RandomResizedCrop(image_size, scale=(min_scale, max_scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    return steps + ([LavisRandomAugment()] if rand_augment else [])


def _eval_steps(image_size: int) -> List[Any]:
    return [v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]


@registry.register_processor("blip_image_train")
class BlipImageTrainProcessor(_BlipImageProcessor):
    """Random resized crop (bicubic), horizontal flip, LAVIS RandAugment, normalise."""

    def __init__(self, image_size: int = 384, min_scale: float = 0.5, max_scale: float = 1.0,
                 rand_augment: bool = True, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        super().__init__(_train_steps(image_size, min_scale, max_scale, rand_augment), mean, std)


@registry.register_processor("blip_image_eval")
class BlipImageEvalProcessor(_BlipImageProcessor):
    """Bicubic resize to a square, normalise."""

    def __init__(self, image_size: int = 384, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        super().__init__(_eval_steps(image_size), mean, std)


@registry.register_processor("blip2_image_train")
class Blip2ImageTrainProcessor(_BlipImageProcessor):
    """BLIP-2's: random resized crop (bicubic), horizontal flip, normalise; no RandAugment."""

    def __init__(self, image_size: int = 224, min_scale: float = 0.5, max_scale: float = 1.0,
                 rand_augment: bool = False, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        super().__init__(_train_steps(image_size, min_scale, max_scale, rand_augment), mean, std)


@registry.register_processor("blip2_image_eval")
class Blip2ImageEvalProcessor(_BlipImageProcessor):
    """Bicubic resize to a 224 px square (BLIP-2's size), normalise."""

    def __init__(self, image_size: int = 224, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        super().__init__(_eval_steps(image_size), mean, std)


# --------------------------------------------------------------------------- text
# LAVIS's character class: these become spaces in captions and vanish from
# questions. Commas, apostrophes, hyphens and "?" are kept.
_LAVIS_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_WHITESPACE = re.compile(r"\s+")


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} expects one string, got {type(text).__name__}: {text!r:.80}")
    return text


def _first_words(text: str, max_words: int) -> str:
    return " ".join(text.split(" ")[:max_words])


def _check_max_words(max_words: int) -> int:
    if not isinstance(max_words, int) or isinstance(max_words, bool) or max_words < 1:
        raise ValueError(f"max_words must be a positive integer, got {max_words!r}")
    return max_words


@registry.register_processor("blip_caption")
class BlipCaptionProcessor(_Configurable):
    """LAVIS caption cleaning, then ``prompt`` in front (the prompt is not counted in ``max_words``)."""

    def __init__(self, prompt: str = "", max_words: int = 50):
        self.prompt = prompt
        self.max_words = _check_max_words(max_words)

    def __call__(self, caption: str) -> str:
        return self.prompt + self.pre_caption(caption)

    def pre_caption(self, caption: str) -> str:
        """Lower-case; LAVIS's punctuation -> space; one space between words; first ``max_words`` words."""
        caption = _LAVIS_PUNCTUATION.sub(" ", _check_text(caption, "blip_caption").lower())
        return _first_words(_WHITESPACE.sub(" ", caption).strip(), self.max_words)


@registry.register_processor("blip_question")
class BlipQuestionProcessor(_Configurable):
    """LAVIS question cleaning: lower-case, delete LAVIS's punctuation (``?`` stays), first ``max_words`` words."""

    def __init__(self, max_words: int = 50):
        self.max_words = _check_max_words(max_words)

    def __call__(self, question: str) -> str:
        return self.pre_question(question)

    def pre_question(self, question: str) -> str:
        question = _LAVIS_PUNCTUATION.sub("", _check_text(question, "blip_question").lower())
        return _first_words(_WHITESPACE.sub(" ", question).strip(), self.max_words)
