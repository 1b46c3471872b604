"""A training step of vlft against LAVIS 1.0.2's own classes, same shapes, same batch.

    python benchmarks/vs_lavis.py --lavis-python /path/to/lavis-venv/bin/python
    python benchmarks/vs_lavis.py --lavis-python ... --models blip2 --trials 5

LAVIS 1.0.2 needs transformers 4.26, so it lives in its own virtual environment
(``pip install torch torchvision "transformers==4.26.1" "timm==0.4.12" fairscale omegaconf
iopath einops pycocotools pandas decord webdataset opencv-python-headless spacy
pycocoevalcap "numpy<2"`` then ``pip install --no-deps salesforce-lavis==1.0.2``);
``benchmarks/_lavis_worker.py`` runs there. Models, both randomly initialised:

* ``blip_caption``: both towers ``--hidden-size`` x ``--num-layers`` (heads of 64), ViT
  patch 16 at ``--image-size``, the shapes tokenizer, prompt "a picture of ", dropout 0.
  LAVIS: ``VisionTransformerEncoder`` + ``XBertLMHeadDecoder``; vlft: ``blip_caption`` with
  ``attn_implementation`` eager (the default) and sdpa.
* ``blip2``: stage 1 (ITC + ITM + ITG) at ``benchmarks/blip2_train.py``'s ``small``
  shapes (``--blip2-size``) (frozen fp32 ViT 6 x 256 at 128 px, Q-Former 4 x 256, 32 queries), the
  shapes_qa tokenizer. LAVIS: ``eva_vit.VisionTransformer`` + its Q-Former
  ``BertLMHeadModel`` in ``Blip2Qformer``; vlft: ``blip2``.

Each trial runs every variant once, in a fresh process (build, ``--warmup`` steps, then
``--steps`` timed steps of forward, backward, AdamW, ``zero_grad``), in reversed order
every other trial; the figure is the median seconds per step over all timed steps.
Optimizers as each framework's runner builds them: LAVIS ``torch.optim.AdamW`` with
torch's default kernel, vlft ``run.optimizer_impl: auto`` (fused). Printed: ms per step
and LAVIS's time / vlft's (above 1: vlft is faster).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def caption_shapes(a) -> dict:
    h = a.hidden_size
    return dict(hidden_size=h, num_layers=a.num_layers, heads=max(1, h // 64), intermediate_size=4 * h,
                image_size=a.image_size, max_positions=32, max_txt_len=20,  # the tiny YAML's
                dropout=0.0)  # as blip_caption_train.py sets it


def blip2_shapes(size: str) -> dict:
    """The shapes of ``blip2_train.py``'s ``size`` (``tiny``: the tiny YAML's)."""
    from blip2_train import stage1_config
    from transformers import Blip2QFormerConfig

    from vlft.models.eva_vit import vision_config

    cfg = stage1_config(argparse.Namespace(size=size), "fp32 frozen ViT")[1]
    v = vision_config(cfg.vit_model, cfg.image_size, **(cfg.get("vision_config") or {}))
    q = Blip2QFormerConfig(**cfg.qformer_config)
    return dict(image_size=cfg.image_size, num_query_token=cfg.num_query_token, embed_dim=cfg.embed_dim,
                max_txt_len=cfg.max_txt_len,
                vision=dict(hidden_size=v.hidden_size, num_layers=v.num_hidden_layers, heads=v.num_attention_heads,
                            intermediate_size=v.intermediate_size, patch_size=v.patch_size),
                qformer=dict(hidden_size=q.hidden_size, num_layers=q.num_hidden_layers, heads=q.num_attention_heads,
                             intermediate_size=q.intermediate_size, max_positions=q.max_position_embeddings,
                             dropout=q.hidden_dropout_prob))  # 0.1, as LAVIS's (bert-base-uncased)


def build_vlft(spec: dict):
    """The vlft model of ``spec`` (in this environment)."""
    import torch
    from omegaconf import OmegaConf

    from vlft.common.registry import registry

    torch.manual_seed(0)
    if spec["model"] == "blip2":
        from blip2_train import SIZES

        cls = registry.get_model_class("blip2")
        cfg = OmegaConf.load(cls.default_config_path("tiny")).model
        cfg.merge_with(dict(load_pretrained=False, load_finetuned=False, **SIZES[spec["blip2_size"]]))
        return cls.from_config(cfg)
    from blip_caption_train import build

    s = spec["shapes"]
    model = build(argparse.Namespace(hidden_size=s["hidden_size"], num_layers=s["num_layers"], image_size=s["image_size"]))
    from vlft.models.blip.sdpa import set_blip_attention

    set_blip_attention(model, spec["attn"])
    return model


def vlft_worker(spec_file: str) -> None:
    import torch

    import vlft  # noqa: F401
    from vlft.runners.optim import ADAMW_IMPLS, adamw_impl

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(spec["threads"])
    model = build_vlft(spec).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, **ADAMW_IMPLS[adamw_impl("auto", params)])
    print(json.dumps(timed_steps(model, opt, spec)))


def timed_steps(model, opt, spec: dict) -> dict:
    """Both workers' loop (``_lavis_worker.py`` imports it: nothing here needs vlft):
    ``spec["warmup"]`` + ``spec["steps"]`` training steps on the spec's batch; the seconds
    of the timed ones, the first loss and the parameter count."""
    import torch

    batch = torch.load(spec["batch_file"], weights_only=True)
    samples = {"image": batch["image"], "text_input": batch["text_input"], "image_id": batch["image_id"],
               "epoch": 0, "iters": 0, "num_iters_per_epoch": 100}  # as both runners add them
    times, first = [], None
    for i in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        loss = model(samples)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        first = loss.item() if first is None else first
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - start)
    return {"seconds": times, "first_loss": first, "params": sum(p.numel() for p in model.parameters())}


def write_inputs(model: str, a, tmp: Path) -> dict:
    """The batch and the vocabulary file both sides read; the spec without variant."""
    import torch

    import vlft  # noqa: F401
    from vlft.datasets.synthetic_shapes import make_scene, scene_caption
    from vlft.models.blip.blip_caption import load_tokenizer
    from vlft.processors.blip_processors import BlipImageEvalProcessor

    shapes = blip2_shapes(a.blip2_size) if model == "blip2" else caption_shapes(a)
    tokenizer = load_tokenizer("shapes_qa" if model == "blip2" else "shapes")
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (tmp / "vocab.txt").write_text("".join(f"{word}\n" for word, _ in vocab))
    prompt = "" if model == "blip2" else "a picture of "
    proc = BlipImageEvalProcessor(image_size=shapes["image_size"])
    images = torch.stack([proc(make_scene(i, 0, shapes["image_size"])["image"]) for i in range(a.batch_size)])
    torch.save({"image": images.contiguous(), "text_input": [prompt + scene_caption(i, 0) for i in range(a.batch_size)],
                "image_id": torch.arange(a.batch_size)}, tmp / f"{model}_batch.pt")
    return dict(model=model, shapes=shapes, prompt=prompt, blip2_size=a.blip2_size, vocab_file=str(tmp / "vocab.txt"),
                batch_file=str(tmp / f"{model}_batch.pt"), steps=a.steps, warmup=a.warmup, threads=a.threads)


def run_one(command, spec: dict, tmp: Path) -> dict:
    path = tmp / "spec.json"
    path.write_text(json.dumps(spec))
    out = subprocess.run([*command, str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lavis-python", help="the python of a virtual environment with LAVIS 1.0.2 (without: vlft only)")
    p.add_argument("--models", default="blip_caption,blip2")
    p.add_argument("--hidden-size", type=int, default=384)
    p.add_argument("--num-layers", type=int, default=6)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--blip2-size", choices=("tiny", "small"), default="small", help="blip2_train.py's sizes")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    a, rest = p.parse_known_args(argv)
    if a._worker:
        vlft_worker(a._worker)
        return 0
    lavis = [a.lavis_python, str(HERE / "_lavis_worker.py")] if a.lavis_python else None
    vlft = [sys.executable, str(Path(__file__).resolve()), "--_worker"]
    if lavis is None:
        print("no --lavis-python: vlft's figures only, ratios against vlft's first variant")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for model in a.models.split(","):
            spec = write_inputs(model, a, tmp)
            variants = {"LAVIS 1.0.2": (lavis, spec)} if lavis else {}
            if model == "blip2":
                variants["vlft"] = (vlft, spec)
            else:
                variants.update({f"vlft {attn}": (vlft, {**spec, "attn": attn}) for attn in ("eager", "sdpa")})
            times = {name: [] for name in variants}
            info = {}
            for trial in range(a.trials):
                for name in (list(variants) if trial % 2 == 0 else list(variants)[::-1]):
                    result = run_one(*variants[name], tmp)
                    times[name] += result["seconds"]
                    info[name] = result
            print(f"\n{model}: {json.dumps(spec['shapes'])}, batch {a.batch_size}, fp32, {a.threads} thread(s); "
                  f"{a.trials} trials x {a.steps} steps")
            base = statistics.median(times[next(iter(variants))])
            print(f"{'':14s} {'params':>9s} {'ms/step':>9s} {'LAVIS / this' if lavis else 'first / this':>13s} "
                  f"{'first loss':>11s}")
            for name in variants:
                med = statistics.median(times[name])
                print(f"{name:14s} {info[name]['params'] / 1e6:8.2f}M {med * 1e3:9.1f} {base / med:13.3f} "
                      f"{info[name]['first_loss']:11.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
