"""Florence-2 <OD>: batched evaluation vs the seed's one-image-at-a-time loop, and (on a GPU)
LoRA fine-tuning throughput of a Florence-2-base-shaped model.

    python benchmarks/florence2_eval.py --num-images 64 --batch-size 16 --threads 1
    python benchmarks/florence2_eval.py --train --device cuda      # where a GPU is lent

Evaluation (CPU or GPU)
-----------------------
* Batched: ``DetectionTask.valid_step(model, samples)`` over batches of ``--batch-size``
  images, what the runner calls: ``Florence2.predict`` (beam search with ``--num-beams``,
  then one teacher-forced pass for the box scores, then parsing).
* Per-image (the seed notebook's loop): for each image, transformers' ``Florence2Processor``
  builds the inputs, ``Florence2ForConditionalGeneration.generate(input_ids, pixel_values,
  max_new_tokens, num_beams)``, ``batch_decode(skip_special_tokens=False)`` and
  ``post_process_generation(task="<OD>", image_size=...)``.

Both decode the same images with the same tiny model: the detection demo's weights
(``--cfg-path projects/demo/detect_shapes.yaml --checkpoint output/demo/detect_shapes/<run>/checkpoint_best.pth``),
whose outputs are
well-formed boxes, or a random one (``--init-std`` redraws its weight matrices so that the
generations depend on the image, as in ``benchmarks/caption_eval.py``); the script checks that the generated texts agree and that
the boxes agree up to transformers' integer truncation (vlft keeps the bin centres as
floats), then prints images/s of each path and their ratio. Only decoding is timed; the
images are drawn and pre-processed before.

Training (``--train``, GPU)
---------------------------
A randomly initialised model with Florence-2-base's shapes (DaViT 128/256/512/1024, depths
1/1/9/1, window 12; BART 768, 6+6 layers, vocabulary 51,328), 768 px inputs (577 image
features), LoRA r=8 on ``florence2_language`` + ``florence2_vision``, bf16 autocast,
AdamW: samples/s over ``--train-steps`` steps after warm-up, and the peak CUDA memory.

Measured
--------
CPU (2 cores shared with other jobs, ``--threads 1``, 64 images, batch 16, 3 beams,
``--max-len 24``): see docs/florence2.md ("Benchmark"). GPU: not measured yet (no device
was lent to the session that wrote this); run ``--train --device cuda``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from vlft.datasets.synthetic_shapes import make_scene  # noqa: E402
from vlft.models.florence2.model import Florence2  # noqa: E402
from vlft.processors.florence2 import Florence2ImageEvalProcessor  # noqa: E402
from vlft.tasks.detection import DetectionTask  # noqa: E402

BASE_VISION = dict(embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32], num_groups=[4, 8, 16, 32],
                   depths=[1, 1, 9, 1], window_size=12, projection_dim=768, drop_path_rate=0.1)
BASE_TEXT = dict(vocab_size=51328, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024)


def tiny_model(a: argparse.Namespace) -> Florence2:
    if a.cfg_path:  # the model section of a project, e.g. the demo's (2+2 layers)
        from vlft.common.config import Config

        cfg = Config.from_file(a.cfg_path).model_cfg
    else:
        cfg = OmegaConf.load("configs/models/florence2/tiny.yaml").model
    torch.manual_seed(a.seed)
    model = Florence2.from_config(cfg)
    if a.checkpoint:  # e.g. the detection demo's checkpoint_best.pth: well-formed boxes to compare
        model.load_checkpoint(a.checkpoint)
    elif a.init_std > 0:
        gen = torch.Generator().manual_seed(a.seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, a.init_std, generator=gen)
    return model.eval().to(a.device)


def seed_loop(model: Florence2, processor, images, a: argparse.Namespace) -> List[Dict[str, Any]]:
    out = []
    for image in images:
        inputs = processor(text="<OD>", images=image, return_tensors="pt").to(a.device)
        ids = model.hf.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                                attention_mask=inputs["attention_mask"], max_new_tokens=a.max_len, num_beams=a.num_beams)
        text = processor.batch_decode(ids, skip_special_tokens=False)[0]
        parsed = processor.post_process_generation(text, task="<OD>", image_size=image.size)["<OD>"]
        out.append({"text": text.replace("<s>", "").replace("</s>", "").replace("<pad>", "").strip(), **parsed})
    return out


def batched(task: DetectionTask, model: Florence2, batches) -> List[Dict[str, Any]]:
    results = []
    with torch.no_grad():
        for samples in batches:
            results.extend(task.valid_step(model, samples))
    return results


def evaluation(a: argparse.Namespace) -> None:
    model = tiny_model(a)
    processor = model.processor(64)
    images = [make_scene(i, a.seed, 64)["image"] for i in range(a.num_images)]
    vis = Florence2ImageEvalProcessor(64)
    pixels = torch.stack([vis(im) for im in images]).to(a.device)
    batches = [{"image": pixels[i:i + a.batch_size], "prompt": ["<OD>"] * len(pixels[i:i + a.batch_size]),
                "orig_size": torch.tensor([im.size for im in images[i:i + a.batch_size]], dtype=torch.float32),
                "instance_id": list(range(i, min(i + a.batch_size, a.num_images))),
                "image_id": list(range(i, min(i + a.batch_size, a.num_images)))} for i in range(0, a.num_images, a.batch_size)]
    task = DetectionTask(num_beams=a.num_beams, max_len=a.max_len, min_len=1)
    batched(task, model, batches[:1])
    seed_loop(model, processor, images[:2], a)  # warm-up
    times = {"batched": [], "per-image": []}
    for _ in range(a.trials):
        t0 = time.perf_counter()
        ours = batched(task, model, batches)
        times["batched"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = seed_loop(model, processor, images, a)
        times["per-image"].append(time.perf_counter() - t0)
    same_text = sum(o["text"] == t["text"] for o, t in zip(ours, theirs))
    # outputs with malformed parts are read differently on purpose (transformers drops them silently)
    clean = [(o, t) for o, t in zip(ours, theirs) if not o["malformed"]]
    same_boxes = sum(o["labels"] == t["labels"] and [[int(v) for v in b] for b in o["bboxes"]] == t["bboxes"]
                     for o, t in clean)
    rate = {k: a.num_images / statistics.median(v) for k, v in times.items()}
    print(f"{a.num_images} images, batch {a.batch_size}, {a.num_beams} beams, max {a.max_len} new tokens, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")
    print(f"texts agree: {same_text}/{a.num_images}; boxes agree (up to int truncation) on the {len(clean)} "
          f"well-formed outputs: {same_boxes}/{len(clean)}")
    print(f"batched   {rate['batched']:8.1f} img/s\nper-image {rate['per-image']:8.1f} img/s\n"
          f"ratio     {rate['batched'] / rate['per-image']:8.1f}")


def training(a: argparse.Namespace) -> None:
    from vlft.models.adapters import apply_peft

    cfg = OmegaConf.create({"arch": "florence2", "tokenizer": "tiny", "image_size": 768, "vision_config": BASE_VISION,
                            "text_config": BASE_TEXT})
    torch.manual_seed(a.seed)
    model = Florence2.from_config(cfg)
    model = apply_peft(model, {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05,
                               "target_modules": ["florence2_language", "florence2_vision"]}).to(a.device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n = a.train_batch
    batch = {"image": torch.randn(n, 3, 768, 768, device=a.device), "text_input": ["<OD>"] * n,
             "text_output": ["car<loc_52><loc_331><loc_243><loc_486>person<loc_600><loc_100><loc_700><loc_900>"] * n}
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16):
            loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.train_steps):
        step()
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.device.startswith("cuda") else float("nan")
    params = sum(p.numel() for p in model.parameters())
    print(f"Florence-2-base-shaped ({params / 1e6:.1f} M parameters), LoRA, bf16, 768 px, batch {n}: "
          f"{a.train_steps * n / elapsed:.1f} samples/s, peak memory {peak:.1f} GiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-len", type=int, default=24)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init-std", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default=None, help="tiny weights to load (the demo's checkpoint_best.pth)")
    p.add_argument("--cfg-path", default=None, help="take the model section from this project (with --checkpoint)")
    p.add_argument("--train", action="store_true", help="LoRA fine-tuning throughput of a base-shaped model")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    training(a) if a.train else evaluation(a)


if __name__ == "__main__":
    main()
