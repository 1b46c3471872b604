"""How fast does BLIP-2 train, and what do a half-precision ViT and gradient checkpointing buy?

Two sections, each a table with ratios against a baseline measured in the same run:

    python benchmarks/blip2_train.py                      # --size small, 1 thread
    python benchmarks/blip2_train.py --size tiny
    python benchmarks/blip2_train.py --sections 2 --s2-batch-sizes 16,64   # on a CUDA machine

1. Stage 1 (``blip2``: ITC + ITM + ITG) on CPU
----------------------------------------------
Optimizer steps per second of a bare training loop (forward, backward, AdamW step,
``zero_grad(set_to_none=True)``) on one fixed batch, for six variants of the same model:

==============================  ==========  =============  =====================
variant                         ViT         vit_precision  use_grad_checkpoint
==============================  ==========  =============  =====================
fp32 frozen ViT  (baseline)     frozen      fp32           no
bf16 frozen ViT                 frozen      bf16           no
fp32 frozen ViT + ckpt          frozen      fp32           yes
bf16 frozen ViT + ckpt          frozen      bf16           yes
fp32 trainable ViT              trainable   fp32           no
fp32 trainable ViT + ckpt       trainable   fp32           yes
==============================  ==========  =============  =====================

Every variant is ``registry.get_model_class("blip2")`` built by ``from_config`` from the
``tiny`` YAML merged with the variant's keys (and, for ``--size small``, the shapes
below), after the same ``torch.manual_seed``, so all start from the same weights.
``vit_precision`` and ``use_grad_checkpoint`` act only through vlft's
``prepare_vision_encoder``: checkpointing only acts in training mode, and a frozen ViT
is always in eval mode with no gradients through it, so on a frozen ViT it is expected
to change nothing (the two ``+ ckpt`` frozen rows check that). A trainable ViT stays
fp32 whatever ``vit_precision`` says, so there is no bf16 trainable row.

Sizes (``--size``):

* ``tiny``: the ``blip2`` ``tiny`` type as shipped: 2-block ViT of width 32 at 32 px
  (patch 8, 16 patches), 2-layer Q-Former of width 32, 4 queries (~0.1M parameters).
  Python and per-op overhead dominate; the ViT is a sliver of the step.
* ``small`` (default): ViT width 256, 6 blocks, 8 heads, MLP 1024, patch 16 at 128 px
  (64 patches); Q-Former width 256, 4 layers, 8 heads, FFN 1024, 32 queries,
  ``embed_dim`` 256. Big enough that the ViT's arithmetic (and so its precision, and
  its activations when it trains) shows in the step time, small enough for one CPU thread.

Both use the synthetic shapes' word-level tokenizer (``shapes_qa``) and
``max_txt_len`` 20. The batch (``--batch-size``, default 8) is built once:
``synthetic_shapes.make_scene`` images through ``BlipImageEvalProcessor`` and their
``scene_caption`` captions, with distinct ``image_id`` tensors (so ITM's hard
negatives are the other pairs of the batch). AdamW (lr 1e-4, weight decay 0.05) over
the parameters that require grad.

Timing: all six models live in the parent process. Each gets ``--warmup`` untimed steps,
then ``--trials`` trials of ``--steps`` timed steps each; within a trial the variants
run one after another, in reversed order every other trial, so drifting machine load
affects them alike. ``torch.manual_seed`` is reset before each trial (ITM's negatives
are sampled) and ``torch.set_num_threads(--threads)``. The figure is the median over
trials of steps / wall seconds; steps / CPU seconds of the process
(``time.process_time``) is printed beside it: with one thread it is about the wall
figure on an idle machine and moves much less when other processes compete.

Memory on CPU: PyTorch has no ``max_memory_allocated`` for CPU tensors, and
``tracemalloc`` does not see them, so each variant is measured in a fresh subprocess
of this script (a hidden ``--_mem-worker`` mode) in which nothing else was ever
allocated: it builds the variant, runs one warm-up step (grads and AdamW state come to
exist), drops the grads, reads the resident set size, resets the kernel's peak RSS
(``/proc/self/clear_refs`` with ``5``; ``ru_maxrss`` of ``resource.getrusage`` follows)
and runs one more step. Printed:

* ``step peak +MB``: peak RSS during that step minus the RSS just before it: the
  activations kept for backward, the gradients and the transient buffers of one
  training step, above the weights and optimizer state. glibc keeps freed heap memory
  and raises its mmap threshold as it goes, which would let one allocation reuse
  another's pages unseen, so the worker runs with ``MALLOC_MMAP_THRESHOLD_=4096``
  (all but the smallest buffers are mmap'ed and go back to the OS when freed) and
  ``MALLOC_TRIM_THRESHOLD_=0``. Where ``clear_refs`` cannot be written the
  whole-process peak (which includes the warm-up step) is used and a note is printed.
* ``saved MB``: the bytes autograd saved for backward during the forward pass, counted
  with ``torch.autograd.graph.saved_tensors_hooks`` (unique storages, parameters
  excluded). Deterministic, not disturbed by the allocator. Under non-reentrant
  checkpointing the tensors saved inside a checkpointed block are not held (that is
  the point); the block inputs checkpointing keeps for the recompute are not counted
  either (``batch x tokens x width x 4`` bytes per block: 0.5 MB per block for
  ``small`` at batch 8).
* ``static MB``: RSS before the measured step (Python, libraries, weights, AdamW state).

2. Stage 2 (``blip2_opt``) on a CUDA device
-------------------------------------------
Samples per second and peak GPU memory of training with a frozen language model: the
``blip2_opt`` ``tiny`` YAML merged with the real EVA ViT-g/14 shapes (``vit_model:
eva_clip_g``, 39 blocks of width 1408, 986M parameters, frozen) at 224 px, a
BERT-base-shaped Q-Former (width 768, 12 layers, 32 queries, 105M) and an OPT built
from ``text_config`` (random init, no download): by default OPT-350m-like shapes
(hidden 1024, 24 layers, FFN 4096, 16 heads, vocab 50272, ``word_embed_proj_dim`` =
hidden, 356M), frozen. The frozen ViT and OPT are held in fp16 by default, as LAVIS
holds them (``--s2-vit-precision`` / ``--llm-precision``; ``auto`` = the autocast dtype);
vlft runs such frozen half-precision parts in their own dtype outside the surrounding
bf16 autocast (``eva_vit.hold_own_precision``), which would otherwise refuse to mix fp16
and bf16 in one op. The text goes through the
``shapes_opt`` word-level tokenizer (its ids are < 50, a subset of the large
vocabulary). Forward
under ``torch.autocast(dtype=--amp-dtype)`` (bf16; fp16 adds a GradScaler, as vlft's
strategy does), backward, AdamW over the trainable parameters (Q-Former, queries,
``language_projection``, ``ln_vision``). One row per ``--s2-batch-sizes`` entry: after
``--s2-warmup`` steps the peak-memory counter is reset and ``--trials`` trials of
``--s2-steps`` steps are timed (``torch.cuda.synchronize`` at both ends); samples/s is
the median over trials; ``peak GiB`` is ``torch.cuda.max_memory_allocated`` over the
timed steps and ``static GiB`` the memory allocated before them (weights, AdamW state).
Without CUDA the section prints "skipped: no CUDA device". The hidden ``--device cpu``
runs the same code on CPU to check the path (use tiny shapes: ``--vit-model tiny
--s2-image-size 32 --opt-hidden 64 --opt-layers 2 --qformer-hidden 64
--qformer-layers 2``); memory is then not reported.

Figures on the development machine (AMD EPYC, AVX2 only, 1 thread, load ~2-3 on 2
CPUs), ``--size small``: the fp32 baseline ran 0.98 steps/s; a bf16 frozen ViT 0.69x
(its forward alone is ~6x slower than fp32 on a CPU without AVX-512-BF16 / AMX; the
fp32 ViT forward is only ~8% of a step, the Q-Former's three passes dominate);
checkpointing a frozen ViT 1.00x, same memory; a trainable ViT 0.79x, and with
checkpointing 0.81x (within noise) for a step peak of 236 instead of 282 MB (0.84x:
only the ViT's ~46 MB of activations go, the Q-Former's ~229 MB stay). ``--size tiny``:
~29 steps/s whatever the variant (all within noise).

Since the ITG loss reads the ITC pass's query keys and values (LAVIS's
``past_key_values``) instead of running the queries a third time, a ``--size small``
baseline step (forward + backward) costs 46.1 instead of 52.4 GFLOP
(``torch.utils.flop_counter``, 0.88x); timed in one process, the two implementations
alternating over 12 segments of 3 steps on the same weights and batch (1 thread, load
~4 on 2 CPUs), the median step took 0.93x the CPU time (951 vs 1022 ms) and 0.94x the
wall time. The table's wall figures moved by more than that between runs of the same
code on that loaded machine (0.58-0.87 steps/s before, 0.46-0.76 after; CPU steps/s
1.04-1.15 before, 1.08-1.12 after).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import vlft.models  # noqa: E402,F401  (registers the models)
from vlft.common.registry import registry  # noqa: E402
from vlft.datasets.synthetic_shapes import make_scene, scene_caption  # noqa: E402
from vlft.models.eva_vit import VISION_ENCODERS  # noqa: E402
from vlft.processors.blip_processors import BlipImageEvalProcessor  # noqa: E402

# ---------------------------------------------------------------------------- stage 1 set-up
SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": {},  # the tiny YAML as shipped
    "small": dict(image_size=128, num_query_token=32, embed_dim=256,
                  vision_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
                                     num_attention_heads=8, patch_size=16),
                  qformer_config=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                                      intermediate_size=1024, max_position_embeddings=32)),
}

BASELINE = "fp32 frozen ViT"
VARIANTS: Dict[str, Dict[str, Any]] = {
    BASELINE: dict(freeze_vit=True, vit_precision="fp32", use_grad_checkpoint=False),
    "bf16 frozen ViT": dict(freeze_vit=True, vit_precision="bf16", use_grad_checkpoint=False),
    "fp32 frozen ViT + ckpt": dict(freeze_vit=True, vit_precision="fp32", use_grad_checkpoint=True),
    "bf16 frozen ViT + ckpt": dict(freeze_vit=True, vit_precision="bf16", use_grad_checkpoint=True),
    "fp32 trainable ViT": dict(freeze_vit=False, vit_precision="fp32", use_grad_checkpoint=False),
    "fp32 trainable ViT + ckpt": dict(freeze_vit=False, vit_precision="fp32", use_grad_checkpoint=True),
}
NO_CKPT_TWIN = {k: k.replace(" + ckpt", "") for k in VARIANTS if k.endswith(" + ckpt")}


def stage1_config(a: argparse.Namespace, variant: str):
    cls = registry.get_model_class("blip2")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.merge_with(dict(load_pretrained=False, load_finetuned=False, **SIZES[a.size], **VARIANTS[variant]))
    return cls, cfg


def build_stage1(a: argparse.Namespace, variant: str):
    cls, cfg = stage1_config(a, variant)
    torch.manual_seed(a.seed)
    model = cls.from_config(cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    return model, opt, cfg


def stage1_batch(a: argparse.Namespace, image_size: int) -> Dict[str, Any]:
    proc = BlipImageEvalProcessor(image_size=image_size)
    images = torch.stack([proc(make_scene(i, a.seed, image_size)["image"]) for i in range(a.batch_size)])
    return {"image": images.contiguous(), "text_input": [scene_caption(i, a.seed) for i in range(a.batch_size)],
            "image_id": torch.arange(a.batch_size)}


def train_step(model, opt, batch) -> float:
    loss = model(batch)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def describe_stage1(model, cfg) -> str:
    v, q = model.blip2.config.vision_config, model.blip2.config.qformer_config
    n_all = sum(p.numel() for p in model.parameters())
    n_vit = sum(p.numel() for p in model.blip2.vision_model.parameters())
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    return (f"ViT {v.num_hidden_layers}x{v.hidden_size} (heads {v.num_attention_heads}, MLP {v.intermediate_size}, "
            f"patch {v.patch_size}) at {v.image_size} px = {tokens} tokens, {n_vit / 1e6:.2f}M params; "
            f"Q-Former {q.num_hidden_layers}x{q.hidden_size} (heads {q.num_attention_heads}, FFN {q.intermediate_size}), "
            f"{model.num_query} queries; {n_all / 1e6:.2f}M params in all; tokenizer {cfg.tokenizer} "
            f"({len(model.tokenizer)} tokens), max_txt_len {model.max_txt_len}")


# ---------------------------------------------------------------------------- CPU memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class SavedBytes:
    """Bytes autograd saves for backward (unique storages, parameters excluded)."""

    def __init__(self, model: torch.nn.Module):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: Dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            s = t.untyped_storage()
            ptr = s.data_ptr()
            if ptr and ptr not in self.params:
                self.seen[ptr] = max(self.seen.get(ptr, 0), s.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def mem_worker(a: argparse.Namespace) -> None:
    """One variant in a fresh process: the memory figures, as JSON on the last line."""
    torch.set_num_threads(a.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("vlft").setLevel(logging.ERROR)
    model, opt, cfg = build_stage1(a, a._mem_worker)
    batch = stage1_batch(a, cfg.image_size)
    torch.manual_seed(a.seed + 1)
    train_step(model, opt, batch)  # grads and AdamW state now exist
    gc.collect()
    before = rss_bytes()
    reset_ok = reset_peak_rss()
    saved = SavedBytes(model)
    loss = None
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        loss = model(batch)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    del loss
    peak = peak_rss_bytes()
    print(json.dumps({"static": before, "peak_delta": peak - before, "saved": saved.total, "reset_ok": reset_ok}))


def measure_memory(a: argparse.Namespace, variant: str) -> Dict[str, Any]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="0", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS=str(a.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--_mem-worker", variant, "--size", a.size,
           "--batch-size", str(a.batch_size), "--threads", str(a.threads), "--seed", str(a.seed)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker for {variant!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- stage 1 run
def run_stage1(a: argparse.Namespace) -> None:
    print(f"\n== 1. stage 1 (blip2: ITC + ITM + ITG) on CPU, --size {a.size}, batch {a.batch_size} ==")
    t0 = time.perf_counter()
    models: Dict[str, Tuple[Any, Any]] = {}
    cfg = None
    for name in VARIANTS:
        model, opt, cfg = build_stage1(a, name)
        models[name] = (model, opt)
    batch = stage1_batch(a, cfg.image_size)
    print(describe_stage1(models[BASELINE][0], cfg))
    frozen = models[BASELINE][0].blip2.vision_model
    print(f"frozen ViT in training mode after model.train(): {frozen.training}; trainable params: " + ", ".join(
        f"{n} {sum(p.numel() for p in m.parameters() if p.requires_grad) / 1e6:.2f}M"
        for n, (m, _) in models.items() if n in (BASELINE, "fp32 trainable ViT")))
    losses = {}
    for name, (model, opt) in models.items():
        torch.manual_seed(a.seed + 1)
        for _ in range(a.warmup):
            losses[name] = train_step(model, opt, batch)
    print(f"built and warmed up ({a.warmup} step(s) each) in {time.perf_counter() - t0:.1f}s; first-trial losses "
          + ", ".join(f"{v:.3f}" for v in losses.values()))

    wall: Dict[str, List[float]] = {k: [] for k in VARIANTS}
    cpu: Dict[str, List[float]] = {k: [] for k in VARIANTS}
    load_before = os.getloadavg()[0]
    for trial in range(a.trials):
        order = list(VARIANTS) if trial % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            model, opt = models[name]
            torch.set_num_threads(a.threads)
            gc.collect()
            torch.manual_seed(a.seed + 2 + trial)
            t_wall, t_cpu = time.perf_counter(), time.process_time()
            for _ in range(a.steps):
                train_step(model, opt, batch)
            wall[name].append(a.steps / (time.perf_counter() - t_wall))
            cpu[name].append(a.steps / (time.process_time() - t_cpu))
        print(f"trial {trial + 1}: " + "  ".join(f"{wall[n][-1]:.2f}" for n in VARIANTS) + " steps/s (table order)")
    load_after = os.getloadavg()[0]
    vit_ms = vit_forward_ms(a, models, batch)
    del models
    gc.collect()

    mem: Dict[str, Dict[str, Any]] = {}
    if not a.no_memory:
        t1 = time.perf_counter()
        for name in VARIANTS:
            mem[name] = measure_memory(a, name)
        print(f"memory: one fresh subprocess per variant, {time.perf_counter() - t1:.1f}s")
        if not all(m["reset_ok"] for m in mem.values()):
            print("note: /proc/self/clear_refs not writable: 'step peak' is the whole worker's peak RSS")

    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    mb = 2 ** 20
    print(f"\n{'variant':27s} {'steps/s':>8s} {'ratio':>6s} {'CPU st/s':>9s} {'ratio':>6s} {'min-max':>11s}"
          f" {'step peak +MB':>13s} {'saved MB':>9s} {'static MB':>9s}")
    for name in VARIANTS:
        lo, hi = min(wall[name]), max(wall[name])
        m = mem.get(name)
        memtxt = (f" {m['peak_delta'] / mb:13.1f} {m['saved'] / mb:9.1f} {m['static'] / mb:9.0f}" if m else
                  f" {'-':>13s} {'-':>9s} {'-':>9s}")
        print(f"{name:27s} {med[name]:8.3f} {med[name] / med[BASELINE]:6.2f} {med_cpu[name]:9.3f} "
              f"{med_cpu[name] / med_cpu[BASELINE]:6.2f} {lo:5.2f}-{hi:<5.2f}{memtxt}")
    print(f"steps/s: median of {a.trials} trials x {a.steps} steps (wall); CPU st/s: steps per CPU-second of the "
          f"process; ratio: against '{BASELINE}'")
    for ck, base in NO_CKPT_TWIN.items():
        line = f"{ck}: speed {med[ck] / med[base]:.2f}x of '{base}'"
        if mem:
            pk, sv = mem[ck]["peak_delta"], mem[ck]["saved"]
            line += (f", step peak {pk / mb:.1f} vs {mem[base]['peak_delta'] / mb:.1f} MB "
                     f"({pk / max(mem[base]['peak_delta'], 1):.2f}x), saved {sv / mb:.1f} vs {mem[base]['saved'] / mb:.1f} MB")
        print(line)
    f32, b16 = vit_ms[BASELINE], vit_ms["bf16 frozen ViT"]
    print(f"frozen ViT forward alone (no_grad, batch {a.batch_size}, median of {3 * a.steps}): fp32 {f32:.1f} ms, bf16 "
          f"{b16:.1f} ms (bf16/fp32 time {b16 / f32:.2f}); fp32 ViT = {f32 / 1e3 * med[BASELINE]:.0%} of a baseline step")
    print(f"load average (1 min) before / after the trials: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} CPUs")


def vit_forward_ms(a: argparse.Namespace, models, batch) -> Dict[str, float]:
    """Median ms of the frozen ViT's forward alone, fp32 and bf16 alternating."""
    times: Dict[str, List[float]] = {BASELINE: [], "bf16 frozen ViT": []}
    with torch.no_grad():
        for _ in range(3 * a.steps):
            for name in times:
                vit = models[name][0].blip2.vision_model
                t = time.perf_counter()
                vit(pixel_values=batch["image"])
                times[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------------- stage 2
def build_stage2(a: argparse.Namespace, device: torch.device):
    cls = registry.get_model_class("blip2_opt")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    heads = max(1, a.opt_hidden // 64)
    cfg.merge_with(dict(
        load_pretrained=False, load_finetuned=False, vit_model=a.vit_model, image_size=a.s2_image_size,
        freeze_vit=True, vit_precision=a.s2_vit_precision, use_grad_checkpoint=False, num_query_token=a.num_query,
        qformer_config=dict(hidden_size=a.qformer_hidden, num_hidden_layers=a.qformer_layers,
                            num_attention_heads=max(1, a.qformer_hidden // 64), intermediate_size=4 * a.qformer_hidden),
        text_config=dict(vocab_size=a.opt_vocab, hidden_size=a.opt_hidden, word_embed_proj_dim=a.opt_hidden,
                         num_hidden_layers=a.opt_layers, ffn_dim=4 * a.opt_hidden, num_attention_heads=heads,
                         max_position_embeddings=2048),
        freeze_llm=True, llm_precision=a.llm_precision, llm_tokenizer="shapes_opt", max_txt_len=32))
    torch.manual_seed(a.seed)
    model = cls.from_config(cfg)  # built on the CPU in fp32 (frozen parts cast), then moved
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    return model, opt, cfg


def stage2_batch(a: argparse.Namespace, batch_size: int, image_size: int, device: torch.device) -> Dict[str, Any]:
    proc = BlipImageEvalProcessor(image_size=image_size)
    distinct = min(batch_size, 16)  # drawing 224 px scenes is slow; repeat a few
    images = [proc(make_scene(i, a.seed, image_size)["image"]) for i in range(distinct)]
    return {"image": torch.stack([images[i % distinct] for i in range(batch_size)]).to(device),
            "text_input": [scene_caption(i % distinct, a.seed) for i in range(batch_size)]}


def stage2_step(model, opt, batch, autocast, scaler) -> None:
    with autocast():
        loss = model(batch)["loss"]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def run_stage2(a: argparse.Namespace) -> None:
    print("\n== 2. stage 2 (blip2_opt, frozen ViT and LLM) ==")
    if a.device == "auto":
        if not torch.cuda.is_available():
            print("skipped: no CUDA device")
            return
        device = torch.device("cuda")
    else:
        device = torch.device(a.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    model, opt, cfg = build_stage2(a, device)
    v, q, t = (model.blip2.config.vision_config, model.blip2.config.qformer_config, model.blip2.config.text_config)
    count = lambda mod: sum(p.numel() for p in mod.parameters()) / 1e6  # noqa: E731
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "CPU"
    print(f"device {device} ({name}); built in {time.perf_counter() - t0:.1f}s")
    print(f"ViT '{a.vit_model}' {v.num_hidden_layers}x{v.hidden_size} (MLP {v.intermediate_size}, patch {v.patch_size}) "
          f"at {v.image_size} px, frozen {a.s2_vit_precision}, {count(model.blip2.vision_model):.1f}M; Q-Former "
          f"{q.num_hidden_layers}x{q.hidden_size}, {model.blip2.query_tokens.shape[1]} queries, "
          f"{count(model.blip2.qformer):.1f}M; OPT {t.num_hidden_layers}x{t.hidden_size} (FFN {t.ffn_dim}, heads "
          f"{t.num_attention_heads}, vocab {t.vocab_size}), frozen {a.llm_precision}, "
          f"{count(model.blip2.language_model):.1f}M; trainable {trainable:.1f}M")
    amp = None if a.amp_dtype == "none" else {"bf16": torch.bfloat16, "fp16": torch.float16}[a.amp_dtype]
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else (lambda: torch.autocast(device.type, enabled=False))
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    print(f"autocast {a.amp_dtype}{' + GradScaler' if scaler else ''}; {a.s2_warmup} warm-up + {a.trials} trials x "
          f"{a.s2_steps} steps per batch size")

    rows = []
    for bs in a.s2_batch_sizes:
        batch = stage2_batch(a, bs, v.image_size, device)
        try:
            torch.manual_seed(a.seed + 1)
            for _ in range(a.s2_warmup):
                stage2_step(model, opt, batch, autocast, scaler)
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                static = torch.cuda.memory_allocated(device)
            rates = []
            for _ in range(a.trials):
                t1 = time.perf_counter()
                for _ in range(a.s2_steps):
                    stage2_step(model, opt, batch, autocast, scaler)
                sync()
                rates.append(bs * a.s2_steps / (time.perf_counter() - t1))
            peak = torch.cuda.max_memory_allocated(device) if cuda else None
            rows.append((bs, statistics.median(rates), min(rates), max(rates), static if cuda else None, peak, None))
        except (torch.OutOfMemoryError, RuntimeError) as e:  # OOM, or a dtype mix autocast refuses
            msg = "out of memory" if isinstance(e, torch.OutOfMemoryError) else f"failed: {str(e).splitlines()[0]}"
            rows.append((bs, None, None, None, None, None, msg))
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.empty_cache()
        del batch
    base = next((r[1] for r in rows if r[1]), None)
    gib = 2 ** 30
    print(f"\n{'batch':>5s} {'samples/s':>10s} {'ratio':>6s} {'min-max':>15s} {'static GiB':>10s} {'peak GiB':>9s}")
    for bs, med, lo, hi, static, peak, msg in rows:
        if msg:
            print(f"{bs:5d} {msg}")
            continue
        mem = f"{static / gib:10.2f} {peak / gib:9.2f}" if peak is not None else f"{'n/a':>10s} {'n/a':>9s}"
        print(f"{bs:5d} {med:10.2f} {med / base:6.2f} {lo:7.2f}-{hi:<7.2f} {mem}")
    print(f"samples/s: median of {a.trials} trials; ratio: against batch {a.s2_batch_sizes[0]}"
          + ("" if cuda else "; memory not measured on CPU"))


# ---------------------------------------------------------------------------- main
def cpu_model() -> str:
    info: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    info.setdefault(k, v)
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    bf16 = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (f"{info.get('model name', platform.processor())} (family {info.get('cpu family', '?')} model "
            f"{info.get('model', '?')}), bf16-relevant flags: {', '.join(bf16) or 'none (no AVX-512 / AMX)'}")


def csv_ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sections", default="1,2", help="which sections to run (1: stage 1 on CPU, 2: stage 2 on CUDA)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: reproducible on a shared machine)")
    p.add_argument("--trials", type=int, default=3, help="timed trials per variant (both sections)")
    p.add_argument("--seed", type=int, default=0, help="model init and data seed")
    g = p.add_argument_group("stage 1 (CPU)")
    g.add_argument("--size", choices=sorted(SIZES), default="small", help="model shapes (see the docstring)")
    g.add_argument("--batch-size", type=int, default=8, help="image-caption pairs per step")
    g.add_argument("--steps", type=int, default=None, help="timed steps per trial (default: 3 for small, 20 for tiny)")
    g.add_argument("--warmup", type=int, default=None, help="untimed steps per variant before the trials (default: 1 "
                   "for small, 5 for tiny)")
    g.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    g = p.add_argument_group("stage 2 (CUDA)")
    g.add_argument("--s2-batch-sizes", type=csv_ints, default=[32], help="comma-separated batch sizes, one row each")
    g.add_argument("--s2-steps", type=int, default=10, help="timed steps per trial")
    g.add_argument("--s2-warmup", type=int, default=3, help="untimed steps per batch size")
    g.add_argument("--vit-model", choices=sorted(VISION_ENCODERS), default="eva_clip_g", help="frozen ViT shapes")
    g.add_argument("--s2-image-size", type=int, default=224, help="image side in pixels")
    g.add_argument("--s2-vit-precision", choices=("auto", "fp32", "fp16", "bf16"), default="fp16",
                   help="frozen ViT weights (auto: the autocast dtype, fp16 without autocast)")
    g.add_argument("--llm-precision", choices=("auto", "fp32", "fp16", "bf16"), default="fp16",
                   help="frozen OPT weights (auto: the autocast dtype, fp16 without autocast)")
    g.add_argument("--amp-dtype", choices=("bf16", "fp16", "none"), default="bf16", help="torch.autocast dtype")
    g.add_argument("--opt-hidden", type=int, default=1024, help="OPT hidden size (FFN 4x, heads hidden/64)")
    g.add_argument("--opt-layers", type=int, default=24, help="OPT decoder layers")
    g.add_argument("--opt-vocab", type=int, default=50272, help="OPT vocabulary size (embedding and LM head)")
    g.add_argument("--qformer-hidden", type=int, default=768, help="Q-Former width (FFN 4x, heads width/64)")
    g.add_argument("--qformer-layers", type=int, default=12, help="Q-Former layers")
    g.add_argument("--num-query", type=int, default=32, help="learned query tokens")
    p.add_argument("--device", default="auto", help=argparse.SUPPRESS)  # stage 2 device; 'cpu' tests the path
    p.add_argument("--_mem-worker", dest="_mem_worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps is None:
        a.steps = 20 if a.size == "tiny" else 3
    auto = "fp16" if a.amp_dtype == "none" else a.amp_dtype
    a.s2_vit_precision = auto if a.s2_vit_precision == "auto" else a.s2_vit_precision
    a.llm_precision = auto if a.llm_precision == "auto" else a.llm_precision
    if a.warmup is None:
        a.warmup = 5 if a.size == "tiny" else 1
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if a._mem_worker:
        mem_worker(a)
        return 0
    logging.getLogger("vlft").setLevel(logging.ERROR)  # e.g. "vit_precision ignored" for the trainable ViT
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) (torch.set_num_threads), "
          f"{os.cpu_count()} CPUs, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"CPU: {cpu_model()}")
    sections = {s.strip() for s in a.sections.split(",")}
    if "1" in sections:
        run_stage1(a)
    if "2" in sections:
        run_stage2(a)
    print(f"\ntotal wall time {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
