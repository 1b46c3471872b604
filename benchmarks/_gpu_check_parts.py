"""The in-process workloads of ``benchmarks/gpu_check.py`` (each runs in its own worker
process of that script): BLIP-base training throughput with model FLOPs utilisation,
BLIP-2 OPT-2.7B LoRA peak memory, and the data loader's wait share.

Every model is vlft's own class built from random init (no downloads); text goes
through the synthetic shapes' word-level tokenizers (``shapes``, ``shapes_opt``), with
the embedding tables sized as the real vocabularies (BERT 30,524, OPT 50,272), so the
shapes and FLOPs are those of the real models while no tokenizer file is needed.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one training step (forward and
backward; matmuls, convolutions, attention kernels) is the figure MFU uses;
``blip_caption_flops`` is an analytic count beside it (per module: ViT tokens x ViT
matmuls, text tokens x decoder matmuls, cross-attention over the image tokens, the
attention score and value products, the LM head; training = 3 x forward), printed as
a cross-check. Peak dense bf16 tensor TFLOP/s come from the device name
(``PEAK_BF16_TFLOPS``) or ``--peak-tflops``.
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]

#: (substring of torch.cuda.get_device_name, dense bf16 tensor TFLOP/s); first match wins
PEAK_BF16_TFLOPS: List[Tuple[str, float]] = [
    ("GB200", 2500.0), ("B200", 2250.0), ("H200 NVL", 835.0), ("H200", 989.0), ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.0),
]

OPT_2_7B = dict(model_type="opt", vocab_size=50272, hidden_size=2560, word_embed_proj_dim=2560, num_hidden_layers=32,
                ffn_dim=10240, num_attention_heads=32, max_position_embeddings=2048, bos_token_id=2, eos_token_id=2,
                pad_token_id=1)


class Skip(Exception):
    """The check cannot run here (the reason is its message)."""


def peak_bf16_tflops(device_name: str) -> Optional[Tuple[str, float]]:
    """(matched name, dense bf16 TFLOP/s) for a CUDA device name, or None when unknown."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return key, tflops
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def captions(n: int) -> List[str]:
    from vlft.datasets.synthetic_shapes import scene_caption

    return [f"a picture of {scene_caption(i)}" for i in range(n)]


# ---------------------------------------------------------------------------------- models
def blip_caption_model(size: str, device: torch.device):
    """vlft's ``blip_caption`` at BLIP-base shapes (ViT-B/16 at 384 px, BERT-base decoder,
    vocabulary 30,524) or at the ``tiny`` type's, random init, on ``device``."""
    from vlft.common.registry import registry
    import vlft.models  # noqa: F401  (registers the model classes)

    name = "caption_base" if size == "base" else "caption_tiny"
    cfg = OmegaConf.load(REPO / "configs" / "models" / "blip" / f"{name}.yaml").model
    cfg.load_pretrained, cfg.load_finetuned, cfg.tokenizer = False, False, "shapes"
    if size == "base":
        cfg.text_config.vocab_size = 30524
    with torch.device(device):  # random init straight on the device
        model = registry.get_model_class("blip_caption").from_config(cfg)
    return model.to(device)


def blip2_opt_model(size: str, device: torch.device):
    """vlft's ``blip2_opt``: EVA ViT-g (39 blocks, fp16, frozen) + BERT-base Q-Former with 32
    queries + OPT-2.7B shapes (bf16, frozen) at 224 px; or the ``tiny`` type."""
    from vlft.common.registry import registry
    import vlft.models  # noqa: F401

    cfg = OmegaConf.load(REPO / "configs" / "models" / "blip2" / "blip2_opt_tiny.yaml").model
    if size == "opt2.7b":
        cfg.vit_model, cfg.image_size, cfg.vit_precision, cfg.num_query_token = "eva_clip_g", 224, "fp16", 32
        cfg.qformer_config, cfg.text_config, cfg.llm_precision = None, OPT_2_7B, "bf16"
    with torch.device(device):
        model = registry.get_model_class("blip2_opt").from_config(cfg)
    return model.to(device)


def blip_caption_flops(model, batch: int, text_len: int) -> float:
    """Analytic training FLOPs of one step of ``BlipForConditionalGeneration`` (see module doc)."""
    v, t = model.blip.config.vision_config, model.blip.config.text_config
    n_img = (v.image_size // v.patch_size) ** 2 + 1
    d, f = v.hidden_size, v.intermediate_size
    vit = 2 * (n_img - 1) * 3 * v.patch_size ** 2 * d  # patch embedding
    vit += v.num_hidden_layers * (2 * n_img * (4 * d * d + 2 * d * f) + 4 * n_img * n_img * d)
    dt, ft = t.hidden_size, t.intermediate_size
    per_layer = 2 * text_len * (4 * dt * dt + 2 * dt * ft)  # self-attention projections + FFN
    per_layer += 2 * text_len * 2 * dt * dt + 2 * n_img * 2 * t.encoder_hidden_size * dt  # cross q/o, k/v of image
    per_layer += 4 * text_len * text_len * dt + 4 * text_len * n_img * dt  # scores and values
    text = t.num_hidden_layers * per_layer + 2 * text_len * (dt * dt + dt * t.vocab_size)  # + LM head
    return 3.0 * batch * (vit + text)


def counted_flops(fn) -> int:
    """FLOPs torch's flop counter sees while ``fn()`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def adamw(params, device: torch.device) -> torch.optim.Optimizer:
    kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, **kwargs)


def train_step_fn(model, optimizer, samples, device: torch.device):
    def step() -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = model(samples)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def finite_losses(losses: List[torch.Tensor]) -> List[float]:
    values = [float(x) for x in losses]
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise RuntimeError(f"non-finite training loss: {values}")
    return values


# ---------------------------------------------------------------------------------- checks
def throughput(p, device: torch.device, peak: Optional[Tuple[str, float]]) -> Dict[str, Any]:
    """Training samples/s of BLIP-base at 384 px in bf16 autocast, and its MFU."""
    torch.manual_seed(0)
    model = blip_caption_model(p.blip_size, device).train()
    size = model.blip.config.vision_config.image_size
    samples = {"image": torch.randn(p.blip_batch, 3, size, size, device=device), "text_input": captions(p.blip_batch)}
    step = train_step_fn(model, adamw([q for q in model.parameters() if q.requires_grad], device), samples, device)
    losses = [step() for _ in range(p.blip_warmup)]
    flops = counted_flops(lambda: losses.append(step()))
    text_len = model.tokenize(samples["text_input"]).input_ids.shape[1]
    analytic = blip_caption_flops(model, p.blip_batch, text_len)
    sync(device)
    t0 = time.perf_counter()
    losses += [step() for _ in range(p.blip_steps)]
    sync(device)
    step_s = (time.perf_counter() - t0) / p.blip_steps
    finite_losses(losses)
    achieved = flops / step_s / 1e12
    rate = p.blip_batch / step_s
    n_params = sum(q.numel() for q in model.parameters())
    shown = f"{achieved:.1f} TFLOP/s" if achieved >= 1 else f"{achieved * 1e3:.1f} GFLOP/s"
    figure = f"{rate:.1f} samples/s (batch {p.blip_batch}, {size} px, {step_s * 1e3:.0f} ms/step), {shown}"
    mfu = None
    if peak is not None:
        mfu = achieved / peak[1]
        figure += f" = MFU {100 * mfu:.1f}% of {peak[1]:.0f} ({peak[0]} bf16 dense)"
    else:
        figure += f"; MFU n/a (no peak figure for {device_name(device)}; pass --peak-tflops)"
    return {"figure": figure, "detail": {
        "samples_per_s": rate, "step_ms": 1e3 * step_s, "params": n_params, "text_tokens": text_len,
        "flops_per_step_counted": flops, "flops_per_step_analytic": analytic,
        "analytic_over_counted": analytic / flops if flops else None, "tflops_achieved": achieved,
        "peak_tflops": peak[1] if peak else None, "peak_source": peak[0] if peak else None, "mfu": mfu}}


def lora_memory(p, device: torch.device) -> Dict[str, Any]:
    """Peak memory and step time of BLIP-2 OPT-2.7B with LoRA on the LLM, batch 16, bf16."""
    from vlft.models.adapters import apply_peft

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = apply_peft(blip2_opt_model(p.blip2_size, device), {"r": 16, "alpha": 32, "dropout": 0.05,
                                                               "target_modules": ["q_proj", "v_proj"]})
    # peft freezes everything but the adapters; a BLIP-2 fine-tune also trains the
    # Q-Former, its queries, the projection into the LLM and ln_vision
    trainable_parts = ("blip2.qformer.", "blip2.query_tokens", "blip2.language_projection.", "post_layernorm.")
    for name, param in model.named_parameters():
        if any(part in name for part in trainable_parts):
            param.requires_grad_(True)
    model.to(device).train()
    build_s = time.perf_counter() - t0
    params = [q for q in model.parameters() if q.requires_grad]
    size = model.get_base_model().blip2.config.vision_config.image_size
    samples = {"image": torch.randn(p.lora_batch, 3, size, size, device=device), "text_input": captions(p.lora_batch)}
    step = train_step_fn(model, adamw(params, device), samples, device)
    if device.type == "cuda":
        weights = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    losses = [step()]
    sync(device)
    t0 = time.perf_counter()
    losses += [step() for _ in range(p.lora_steps)]
    sync(device)
    step_s = (time.perf_counter() - t0) / p.lora_steps
    finite_losses(losses)
    n_all, n_train = sum(q.numel() for q in model.parameters()), sum(q.numel() for q in params)
    gib = 2.0 ** 30
    detail = {"batch": p.lora_batch, "image_px": size, "step_s": step_s, "build_s": build_s, "params": n_all,
              "trainable": n_train, "lora": "r16 q_proj,v_proj; ViT fp16 frozen, OPT bf16 frozen, amp bf16"}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        detail.update(peak_gib=peak / gib, weights_gib=weights / gib,
                      reserved_gib=torch.cuda.max_memory_reserved(device) / gib)
        figure = f"peak {peak / gib:.1f} GiB at batch {p.lora_batch} (weights {weights / gib:.1f} GiB), " \
                 f"{step_s:.2f} s/step, {n_train / 1e6:.0f}M of {n_all / 1e9:.2f}B trainable"
    else:  # PyTorch keeps no peak for CPU tensors; the process's peak RSS stands in
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        detail.update(peak_rss_gib=rss / gib)
        figure = f"peak RSS {rss / gib:.2f} GiB at batch {p.lora_batch} (CPU process), {step_s:.2f} s/step, " \
                 f"{n_train / 1e6:.2f}M of {n_all / 1e6:.2f}M trainable"
    return {"figure": figure, "detail": detail}


def caption_dataset(root: Path, p):
    """vlft's ``coco_caption`` train split over synthetic PNGs, through the config and the
    builder as a run builds it (blip_image_train at ``p.loader_px``)."""
    from vlft.common.config import Config
    from vlft.common.registry import registry
    from vlft.datasets.synthetic_lavis import write_shapes_lavis

    written = write_shapes_lavis(root, n_train=p.loader_images, n_val=2, n_test=2, image_size=p.loader_image_px)
    ann = written["coco_karpathy_train"]
    records = json.loads(ann.read_text())
    # every file is read several times per pass: a pass as long as the measurement
    # (vlft starts new workers at every pass) without writing that many images
    repeats = -(-(p.loader_steps + p.loader_warmup) * p.loader_batch // len(records))
    ann.write_text(json.dumps(records * repeats))
    project = REPO / "projects" / "blip" / "train" / "caption_coco_ft.yaml"
    cfg = Config(cfg_path=str(project), options=[
        f"run.cache_root={root}", f"run.output_dir={root / 'out'}", "model.load_pretrained=false",
        f"datasets.coco_caption.vis_processor.train.image_size={p.loader_px}",
        f"datasets.coco_caption.vis_processor.eval.image_size={p.loader_px}"])
    task = registry.get_task_class(cfg.run_cfg.task).setup_task(cfg)
    return task.build_datasets(cfg)["coco_caption"]["train"]


def loader_wait(p, device: torch.device, workdir: Path) -> Dict[str, Any]:
    """Share of the step time spent waiting for the next batch while BLIP trains on it."""
    from vlft.runners.data import MicroBatchStream

    t0 = time.perf_counter()
    dataset = caption_dataset(workdir / "lavis", p)
    prep_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = blip_caption_model(p.blip_size, device).train()
    optimizer = adamw([q for q in model.parameters() if q.requires_grad], device)
    stream = MicroBatchStream(dataset, p.loader_batch, p.loader_workers, 0, 1, seed=42)
    batches = stream.iterate(0)
    waits, totals, losses = [], [], []
    for i in range(p.loader_warmup + p.loader_steps):
        t_start = time.perf_counter()
        batch = next(batches)
        image = batch["image"].to(device, non_blocking=True)
        t_data = time.perf_counter()
        samples = {"image": image, "text_input": batch["text_input"]}
        losses.append(train_step_fn(model, optimizer, samples, device)())
        sync(device)  # vlft's runner reads the non-finite flag every step: one sync per step
        if i >= p.loader_warmup:
            waits.append(t_data - t_start)
            totals.append(time.perf_counter() - t_start)
    finite_losses(losses)
    share = sum(waits) / sum(totals)
    step_ms = 1e3 * sum(totals) / len(totals)
    rate = p.loader_batch * len(totals) / sum(totals)
    figure = (f"waiting {100 * share:.1f}% of step time ({p.loader_workers} workers, batch {p.loader_batch} at "
              f"{p.loader_px} px from {p.loader_image_px} px PNGs, {step_ms:.0f} ms/step, {rate:.0f} images/s)")
    detail = {"wait_share": share, "step_ms": step_ms, "max_wait_ms": 1e3 * max(waits), "workers": p.loader_workers,
              "batch": p.loader_batch, "image_px": p.loader_px, "png_px": p.loader_image_px, "prep_s": prep_s,
              "images_per_s": rate}
    return {"figure": figure, "detail": detail, "wait_share": share}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
