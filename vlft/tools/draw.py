"""Pictures of boxes: ground truth next to a model's predictions, with torchvision's
``draw_bounding_boxes`` (no other drawing dependency).

- ``comparison_grid(entries)``: one row per image, ground truth (green) on the left and
  predictions (red, label and score) on the right; small images are enlarged (nearest
  neighbour, boxes scaled with them) so the labels stay readable. The detection and
  grounding tasks save one after each evaluation.
- ``python -m vlft.tools.draw --images DIR --out DIR [--cfg-path project.yaml | --arch
  florence2 --model-type tiny] [--checkpoint ckpt.pth] [--prompt "<OD>"]``: draws a
  model's predictions for every image in a folder (one PNG each, and ``grid.png``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from PIL import Image

logger = logging.getLogger(__name__)
GT_COLOUR, PRED_COLOUR = (0, 160, 60), (220, 30, 30)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str], colour=PRED_COLOUR,
               scores: Optional[Sequence[float]] = None, min_side: int = 256) -> torch.Tensor:
    """``uint8 [3, H, W]``: ``image`` (enlarged to ``min_side`` when smaller) with its boxes."""
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_bounding_boxes

    scale = max(1.0, min_side / min(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    pixels = F.pil_to_tensor(image.convert("RGB"))
    if not len(boxes):
        return pixels
    text = [f"{l} {s:.2f}" if scores is not None else str(l) for l, s in zip(labels, scores or [None] * len(labels))]
    tensor = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale
    # white text on a band of the box's colour: readable over shapes of any colour
    return draw_bounding_boxes(pixels, tensor, labels=text, colors=colour, width=max(1, round(scale / 2)),
                               fill_labels=True, label_colors="white")


def comparison_grid(entries: Sequence[Dict[str, Any]], min_side: int = 256, pairs_per_row: int = 2) -> Image.Image:
    """``pairs_per_row`` pairs ``[ground truth | prediction]`` per row; each entry has ``image`` (PIL), ``gt_labels``,
    ``gt_boxes``, ``labels``, ``boxes``, ``scores`` (pixel boxes of the original image)."""
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import make_grid

    panels: List[torch.Tensor] = []
    for e in entries:
        gt = draw_boxes(e["image"], e.get("gt_boxes", []), e.get("gt_labels", []), GT_COLOUR, None, min_side)
        pred = draw_boxes(e["image"], e.get("boxes", []), e.get("labels", []), PRED_COLOUR, e.get("scores"), min_side)
        panels += [gt, pred]
    if not panels:
        raise ValueError("comparison_grid: no images to draw")
    h = max(p.shape[1] for p in panels)
    w = max(p.shape[2] for p in panels)
    panels = [torch.nn.functional.pad(p, (0, w - p.shape[2], 0, h - p.shape[1]), value=255) for p in panels]
    return F.to_pil_image(make_grid(panels, nrow=2 * max(1, pairs_per_row), padding=4, pad_value=255))


def _load_model(args):
    from omegaconf import OmegaConf

    import vlft.models  # noqa: F401  (registers the models)
    from vlft.common.registry import registry

    if args.cfg_path:
        from vlft.common.config import Config

        cfg = Config.from_file(args.cfg_path, options=args.options)
        model_cfg, vis_cfg = cfg.model_cfg, None
        for ds in cfg.datasets_cfg.values():
            vis_cfg = (ds.get("vis_processor") or {}).get("eval") or vis_cfg
    else:
        model_cls = registry.get_model_class(args.arch)
        default = OmegaConf.load(model_cls.default_config_path(args.model_type))
        model_cfg = OmegaConf.merge(default.model, OmegaConf.from_dotlist(args.options or []))
        model_cfg.model_type = args.model_type
        vis_cfg = (default.get("preprocess") or {}).get("vis_processor", {}).get("eval")
    model = registry.get_model_class(model_cfg.arch).from_config(model_cfg)
    if args.checkpoint:
        model.load_checkpoint(args.checkpoint)
    import vlft.processors  # noqa: F401

    if vis_cfg is None:
        raise ValueError("vlft.tools.draw: no eval image processor found in the config")
    vis = registry.get_processor_class(vis_cfg.name).from_config(vis_cfg)
    return model.eval(), vis


def draw_folder(model, vis_processor, images: Path, out: Path, prompt: str = "<OD>", num_beams: int = 3,
                max_length: int = 1024, batch_size: int = 8) -> List[Path]:
    """Predict boxes for every image in ``images`` and save ``out/<name>.png`` and ``out/grid.png``."""
    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"vlft.tools.draw: no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    out.mkdir(parents=True, exist_ok=True)
    written, entries = [], []
    for start in range(0, len(files), batch_size):
        chunk = [Image.open(p).convert("RGB") for p in files[start:start + batch_size]]
        samples = {"image": torch.stack([vis_processor(im) for im in chunk]).to(model.device),
                   "orig_size": [im.size for im in chunk]}
        for path, im, pred in zip(files[start:], chunk, model.predict(samples, prompt=prompt, num_beams=num_beams,
                                                                     max_length=max_length)):
            F_img = draw_boxes(im, pred["bboxes"], pred["labels"], PRED_COLOUR, pred["scores"])
            target = out / f"{path.stem}.png"
            Image.fromarray(F_img.permute(1, 2, 0).numpy()).save(target)
            written.append(target)
            entries.append({"image": im, "boxes": pred["bboxes"], "labels": pred["labels"], "scores": pred["scores"]})
    comparison_grid(entries).save(out / "grid.png")
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Draw a model's predicted boxes for a folder of images")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cfg-path", default=None, help="project YAML (model + eval processor)")
    parser.add_argument("--arch", default="florence2")
    parser.add_argument("--model-type", default="base_ft")
    parser.add_argument("--checkpoint", default=None, help="vlft checkpoint (or original weights) to load on top")
    parser.add_argument("--prompt", default="<OD>")
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--options", nargs="*", default=[], help="model overrides, e.g. image_size=64")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        model, vis = _load_model(args)
        paths = draw_folder(model, vis, Path(args.images), Path(args.out), args.prompt, args.num_beams, args.max_length)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"drew {len(paths)} images into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
