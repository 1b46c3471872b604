"""BLIP / BLIP-2 processors: shapes, determinism, randomness, crop scale, RGB, text cleaning."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import tests.helpers  # noqa: F401  (offline hub)
from vlft.common.registry import registry
from vlft.processors import (
    Blip2ImageEvalProcessor,
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
    BlipImageEvalProcessor,
    BlipImageTrainProcessor,
    BlipQuestionProcessor,
)
from vlft.processors.blip_processors import LavisRandomAugment
from vlft.processors.image import CLIP_MEAN, CLIP_STD

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def noise_image(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def ramp_image(size: int = 256) -> Image.Image:
    """Red = column, green = row: a crop's pixel values say where it came from."""
    x = torch.arange(size, dtype=torch.uint8)
    pixels = torch.stack([x.view(1, -1).expand(size, size), x.view(-1, 1).expand(size, size), torch.zeros(size, size, dtype=torch.uint8)], -1)
    return Image.fromarray(pixels.contiguous().numpy(), "RGB")


def unnormalise(t: torch.Tensor) -> torch.Tensor:
    return (t * STD + MEAN) * 255


@pytest.mark.parametrize("name,cls,size", [
    ("blip_image_train", BlipImageTrainProcessor, 384),
    ("blip_image_eval", BlipImageEvalProcessor, 384),
    ("blip2_image_train", Blip2ImageTrainProcessor, 224),
    ("blip2_image_eval", Blip2ImageEvalProcessor, 224),
])
def test_registered_with_lavis_defaults(name, cls, size):
    assert registry.get_processor_class(name) is cls
    proc = cls.from_config(OmegaConf.create({"name": name}))  # as the builder passes it
    out = proc(noise_image())
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    small = cls.from_config({"name": name, "image_size": 32})
    assert small(noise_image()).shape == (3, 32, 32)


def test_text_processors_registered():
    assert registry.get_processor_class("blip_caption") is BlipCaptionProcessor
    assert registry.get_processor_class("blip_question") is BlipQuestionProcessor


def test_from_config_only_translates_keys():
    assert BlipImageTrainProcessor.from_config(None).transform.transforms[1].scale == (0.5, 1.0)
    proc = BlipImageTrainProcessor.from_config(OmegaConf.create({"min_scale": 0.3, "max_scale": 0.6, "rand_augment": False}))
    steps = proc.transform.transforms
    assert steps[1].scale == (0.3, 0.6) and not any(isinstance(s, LavisRandomAugment) for s in steps)
    assert any(isinstance(s, LavisRandomAugment) for s in BlipImageTrainProcessor().transform.transforms)
    assert not any(isinstance(s, LavisRandomAugment) for s in Blip2ImageTrainProcessor().transform.transforms)
    caption = BlipCaptionProcessor.from_config(OmegaConf.create({"name": "blip_caption", "prompt": "a photo of ", "max_words": 3}))
    assert (caption.prompt, caption.max_words) == ("a photo of ", 3)


def test_misspelt_config_key_is_an_error():
    with pytest.raises(ValueError, match=r"blip_image_train: unknown config key 'imag_size'; did you mean 'image_size'"):
        BlipImageTrainProcessor.from_config({"name": "blip_image_train", "imag_size": 224})
    with pytest.raises(ValueError, match="min_scale <= max_scale"):
        BlipImageTrainProcessor(min_scale=0.9, max_scale=0.5)
    with pytest.raises(ValueError, match="max_words"):
        BlipCaptionProcessor(max_words=0)


def test_custom_mean_std_from_yaml_lists():
    proc = BlipImageEvalProcessor.from_config(OmegaConf.create({"image_size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}))
    out = proc(Image.new("RGB", (20, 20), (255, 0, 255)))
    assert torch.allclose(out[0], torch.ones(8, 8)) and torch.allclose(out[1], -torch.ones(8, 8))


def test_eval_values_by_hand_and_deterministic():
    colour = (200, 100, 50)
    out = BlipImageEvalProcessor(image_size=16)(Image.new("RGB", (40, 30), colour))
    expected = (torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255 - MEAN) / STD
    assert torch.allclose(out, expected.expand(3, 16, 16), atol=1e-6)

    for proc in (BlipImageEvalProcessor(image_size=48), Blip2ImageEvalProcessor(image_size=48)):
        image = noise_image()
        torch.manual_seed(0)
        first = proc(image)
        torch.manual_seed(123)
        assert torch.equal(first, proc(image))


@pytest.mark.parametrize("cls", [BlipImageTrainProcessor, Blip2ImageTrainProcessor])
def test_train_random_but_seeded(cls):
    proc, image = cls(image_size=48), noise_image()
    outputs = {}
    for seed in (0, 0, 1, 2):
        torch.manual_seed(seed)
        out = proc(image)
        if seed in outputs:
            assert torch.equal(outputs[seed], out), "same seed, different augmentation"
        outputs[seed] = out
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])


def test_full_scale_crop_is_the_eval_resize_or_its_mirror():
    image = noise_image(64, 64)
    train = BlipImageTrainProcessor(image_size=32, min_scale=1.0, max_scale=1.0, rand_augment=False)
    reference = BlipImageEvalProcessor(image_size=32)(image)
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out = train(image)
        flipped = torch.equal(out, reference.flip(-1))
        assert torch.equal(out, reference) or flipped
        seen.add(flipped)
    assert seen == {True, False}  # the horizontal flip happens, half the time


@pytest.mark.parametrize("min_scale,max_scale", [(0.25, 0.25), (0.1, 0.3), (0.5, 1.0)])
def test_crop_area_within_min_max_scale(min_scale, max_scale):
    # on a 256 px ramp the span of red (column) and green (row) values in the output
    # is the crop's width and height, so their product over 256^2 is its area fraction
    proc = Blip2ImageTrainProcessor(image_size=64, min_scale=min_scale, max_scale=max_scale)
    image = ramp_image(256)
    for seed in range(10):
        torch.manual_seed(seed)
        pixels = unnormalise(proc(image))
        width = pixels[0].max() - pixels[0].min() + 1
        height = pixels[1].max() - pixels[1].min() + 1
        area = float(width * height) / 256**2
        assert min_scale - 0.03 <= area <= max_scale + 0.03, (seed, area)


def test_rand_augment_changes_some_images_and_keeps_shape():
    image = noise_image(64, 64)
    plain = BlipImageTrainProcessor(image_size=32, rand_augment=False)
    augmented = BlipImageTrainProcessor(image_size=32, rand_augment=True)
    changed = 0
    for seed in range(12):
        torch.manual_seed(seed)
        a = plain(image)
        torch.manual_seed(seed)  # same crop and flip draws; only the augmentation differs
        b = augmented(image)
        assert b.shape == (3, 32, 32) and b.dtype == torch.float32
        changed += not torch.equal(a, b)
    assert 0 < changed < 12  # each op fires with p = 0.5, some are identity: not always


@pytest.mark.parametrize("op", LavisRandomAugment.OPS)
def test_each_lavis_op_on_pil_and_tensors(op):
    aug, image = LavisRandomAugment(), noise_image(40, 30)
    assert aug._apply(op, image).size == (40, 30)
    tensor = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    for t in (tensor, tensor.float() / 255):
        out = aug._apply(op, t)
        assert out.shape == t.shape and out.dtype == t.dtype


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_non_rgb_pil_images_come_out_rgb(mode):
    image = noise_image(40, 40).convert(mode)
    for proc in (BlipImageTrainProcessor(image_size=24), BlipImageEvalProcessor(image_size=24), Blip2ImageTrainProcessor(image_size=24)):
        assert proc(image).shape == (3, 24, 24)
    if mode == "L":  # grey in, grey out: the three channels carry the same pixel values
        pixels = unnormalise(BlipImageEvalProcessor(image_size=24)(image))
        assert torch.allclose(pixels[0], pixels[1], atol=1e-3) and torch.allclose(pixels[1], pixels[2], atol=1e-3)


def test_tensor_images_are_accepted():
    proc = BlipImageEvalProcessor(image_size=24)
    for tensor in (torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8),
                   torch.randint(0, 256, (1, 40, 50), dtype=torch.uint8),
                   torch.randint(0, 256, (4, 40, 50), dtype=torch.uint8),
                   torch.rand(3, 40, 50)):
        out = proc(tensor)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    torch.manual_seed(0)
    out = BlipImageTrainProcessor(image_size=24)(torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8))
    assert out.shape == (3, 24, 24)
    # a uint8 tensor and the same pixels as a PIL image give (nearly) the same result
    image = Image.new("RGB", (30, 30), (10, 200, 90))
    from_tensor = proc(torch.tensor([10, 200, 90], dtype=torch.uint8).view(3, 1, 1).expand(3, 30, 30).contiguous())
    assert torch.allclose(proc(image), from_tensor, atol=1e-5)
    with pytest.raises(ValueError, match="C in 1, 3, 4"):
        proc(torch.zeros(2, 10, 10))
    with pytest.raises(TypeError, match="PIL image or an image tensor"):
        proc("photo.jpg")


@pytest.mark.parametrize("raw,expected", [
    # lower-case; . ! ( ) become spaces; the run of spaces and the newline collapse; ends stripped
    ("A Dog (running) on the BEACH!!  \n", "a dog running on the beach"),
    ('"Quoted" #tag: yes; no~ *star*', "quoted tag yes no star"),
    # LAVIS keeps commas, apostrophes, hyphens and question marks
    ("The man's well-known hat, red?", "the man's well-known hat, red?"),
    ("  leading\tand trailing \t", "leading and trailing"),
    ("...", ""),
])
def test_caption_cleaning(raw, expected):
    assert BlipCaptionProcessor()(raw) == expected


def test_caption_prompt_and_max_words():
    proc = BlipCaptionProcessor(prompt="a picture of ", max_words=3)
    # truncation counts the caption's words only; the prompt goes in front afterwards
    assert proc("One two, THREE four five.") == "a picture of one two, three"
    assert proc("Cat.") == "a picture of cat"
    assert BlipCaptionProcessor(max_words=2).pre_caption("a (b) c") == "a b"
    with pytest.raises(TypeError, match="one string"):
        proc(["a caption", "another"])


@pytest.mark.parametrize("raw,expected", [
    # LAVIS deletes (not spaces) . ! " ( ) * # : ; ~ and keeps ? , '
    ("What is on the table, left? (Be brief.)", "what is on the table, left? be brief"),
    ("Is it a \"dog\"?!", "is it a dog?"),
    ("How many 3.5-inch disks?  ", "how many 35-inch disks?"),
])
def test_question_cleaning(raw, expected):
    assert BlipQuestionProcessor()(raw) == expected


def test_question_max_words():
    assert BlipQuestionProcessor(max_words=4)("What colour is the large bus?") == "what colour is the"
    assert BlipQuestionProcessor.from_config({"name": "blip_question", "max_words": 2})("Why so?") == "why so?"
