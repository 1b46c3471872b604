"""How much faster is the captioning task's batched generation than captioning one image at a time?

Both paths caption the same images with the same small, randomly initialised BLIP in
one process; the script checks that they produce the same captions, then prints the
images per second of each and their ratio (batched / per-image).

    python benchmarks/caption_eval.py --num-images 128 --batch-size 32 --threads 2

What is compared
----------------
* Batched: ``CaptionTask.valid_step(model, samples)`` over batches of ``--batch-size``
  images, i.e. what the runner calls during evaluation (``BlipCaption.generate`` on a
  whole batch with the task's decoding settings).
* Per-image: a plain loop of ``model.generate({"image": x[None]}, num_beams=...,
  max_length=..., min_length=...)``, one image per call, with the same decoding
  settings: beam search, ``--num-beams`` (default 3), ``--max-len`` 30 and
  ``--min-len`` 8 (the task's defaults), no sampling, repetition penalty 1.0.

``--cache default`` gives both paths transformers' own beam-search cache instead of
vlft's (``vlft.models.generation_cache``: the cross-attention keys and values of the
image tokens are not re-copied at every step); run the script both ways to compare.

The model (``--model-type``, default ``tiny``)
----------------------------------------------
``blip_caption``'s YAML for ``--model-type``, built through ``BlipCaption.from_config``
as ``vlft.models.load_model`` does, with three overrides: never load weights
(``load_pretrained`` / ``load_finetuned`` off: a random BLIP), the ``shapes``
word-level tokenizer (``--tokenizer``; nothing downloaded), and ``--image-size``.

The default is the ``tiny`` type at 64x64 px instead of its 32 px, so the ViT sees 64
patches (8 px each) instead of 16: about 0.19M parameters, 2+2 layers of width 64. At
32 px a call does almost no arithmetic and the comparison measures little but the
Python cost of one ``generate`` call; at 64 px the per-call compute is still small
(the regime where batching pays most, as for any small captioner on CPU) but not
negligible. ``--hidden-size`` / ``--num-layers`` widen or deepen both towers (the
intermediate size is 2x the width, as in ``tiny``) to see how the ratio falls as
compute grows. ``--base-shapes`` gives both towers BLIP-base's shapes instead (ViT-B/16
and a BERT-base decoder: width 768, 12 layers, 12 heads, MLP 3072, patch 16; 577 image
tokens at ``--image-size 384``).

``--init-std`` (default 0.05): after HF's initialisation, every weight matrix (2+ dims)
is redrawn from N(0, std) with its own seeded generator. With HF's default init
(std 0.02, the cross-attention contributes almost nothing) a random BLIP writes the
*same* caption for every image, and the agreement check below would pass even if the
batched path mixed up the rows of a batch. With 0.05 the captions depend on the image
and differ in length (some beams end early), so the check means something. Pass 0 to
keep HF's init.

The images are ``synthetic_shapes.make_scene(i, seed)`` scenes (64 px, deterministic)
through the ``blip_image_eval`` processor, done once before any timing, and sliced into
batches (contiguous tensors) up front. Only generation is timed.

How it is timed
---------------
After a warm-up (one batched call and ``--warmup`` per-image calls), each of
``--trials`` trials walks the images in chunks of one batch: the batched call on the
chunk and the per-image loop over the same images, in alternating order from chunk to
chunk, so drifting machine load hits both paths alike. Each call (or loop) is timed
with ``time.perf_counter()``, and ``time.process_time()`` as a check. A trial's
images/s is the number of images over the summed seconds of its calls; the headline
is the median over trials. The table also gives the best trial, the median over all
chunks of each chunk's images/s, and the CPU time.

``torch.set_num_threads(--threads)`` (default 2). On a 2-core machine that anything
else is using, 2 OpenMP threads make every small op wait for a descheduled thread:
the per-image path, made of thousands of tiny ops, slows down several-fold and erratically
(its CPU time rises too: the waiting thread spins). The script prints the load average
and warns when it is high; there, ``--threads 1`` gives stable figures
(``OMP_WAIT_POLICY=PASSIVE`` softens it but does not cure it).

Correctness
-----------
After the per-trial lines and before the summary table, the script prints how many of the N captions agree between the two
paths (and between trials). With one shared prompt there is no padding in the batched
path: every row has the same prompt ids and the same number of image patches, so the
only possible difference is floating-point (a batched matmul may sum in another order
than a 1-row one). It prints the largest difference of the ViT features and of the
first decoding step's log-probabilities between a batch and the same images one at a
time. A caption can only change if such a difference flips a near-tie between beams.

Measured (2-core CPU shared with other jobs, load average about 3, ``--threads 1``)
--------------------------------------------------------------------------------------
Default model: batched about 183 img/s, per-image about 15 img/s, ratio about 12; 128/128
captions agree, bit-identical ViT features and log-probs. A per-image call takes about
68 ms: the ViT about 1 ms, then about 26 decoder steps of about 2.5 ms, nearly all of it
fixed per-step cost (module calls, cache and beam bookkeeping in transformers'
``_beam_search``; the ``linear`` kernels are under 10%). The batched call spreads that
over 32 images. The ratio depends on how much arithmetic a step does and on how long
the captions are (the random model decides that): 64 images, 2 trials,
``--image-size 32``: 17.6 (captions of 3 words, and only one distinct caption);
``--image-size 96``: 5.8 (3-4 words); ``--hidden-size 128``: 7.3 (6-16 words);
``--hidden-size 256 --num-layers 4 --image-size 96`` (5.4M params): 3.5.

``--profile`` runs cProfile over ``--profile-images`` per-image calls and one batched
call and prints where the time goes.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import time
from typing import Any, Dict, List, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import vlft.models  # noqa: E402,F401  (registers the models)
from vlft.common.registry import registry  # noqa: E402
from vlft.datasets.synthetic_shapes import make_scene  # noqa: E402
from vlft.processors.blip_processors import BlipImageEvalProcessor  # noqa: E402
from vlft.tasks.captioning import CaptionTask  # noqa: E402

DEFAULTS = CaptionTask.RUN_OPTIONS  # the task's decoding defaults


# ---------------------------------------------------------------------------- set-up
BLIP_BASE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)


def build_model(a: argparse.Namespace):
    """A random ``blip_caption`` from the ``--model-type`` YAML with the overrides above."""
    model_cls = registry.get_model_class("blip_caption")
    cfg = OmegaConf.load(model_cls.default_config_path(a.model_type)).model
    cfg.model_type = a.model_type
    cfg.load_pretrained = False
    cfg.load_finetuned = False
    cfg.tokenizer = a.tokenizer
    cfg.image_size = a.image_size
    for tower in ("vision_config", "text_config"):
        sub = cfg.get(tower) or OmegaConf.create({})
        if a.hidden_size:
            sub.hidden_size = a.hidden_size
            sub.intermediate_size = 2 * a.hidden_size
        if a.num_layers:
            sub.num_hidden_layers = a.num_layers
        if a.base_shapes:
            sub.update(BLIP_BASE, **({"patch_size": 16} if tower == "vision_config" else {}))
        if tower == "vision_config":
            sub.image_size = a.image_size
        cfg[tower] = sub
    torch.manual_seed(a.seed)
    model = model_cls.from_config(cfg)
    if a.init_std > 0:
        gen = torch.Generator().manual_seed(a.seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, a.init_std, generator=gen)
    return model.eval(), cfg


def build_images(a: argparse.Namespace) -> torch.Tensor:
    proc = BlipImageEvalProcessor(image_size=a.image_size)
    return torch.stack([proc(make_scene(i, a.seed, a.scene_size)["image"]) for i in range(a.num_images)])


def make_batches(images: torch.Tensor, batch_size: int) -> List[Dict[str, Any]]:
    return [{"image": images[i:i + batch_size].contiguous(), "image_id": list(range(i, min(i + batch_size, len(images))))}
            for i in range(0, len(images), batch_size)]


# ---------------------------------------------------------------------------- the two paths
def batched_pass(task: CaptionTask, model, batches) -> List[str]:
    results = []
    with torch.no_grad():  # as the runner's evaluation loop
        for samples in batches:
            results.extend(task.valid_step(model, samples))
    assert [r["image_id"] for r in results] == [i for b in batches for i in b["image_id"]]
    return [r["caption"] for r in results]


def per_image_pass(model, singles, a: argparse.Namespace) -> List[str]:
    captions = []
    for samples in singles:
        captions.extend(model.generate(samples, num_beams=a.num_beams, max_length=a.max_len, min_length=a.min_len))
    return captions


def timed(fn, *args) -> Tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


# ---------------------------------------------------------------------------- numerics check
@torch.no_grad()
def batch_vs_single_numerics(model, batch: Dict[str, Any]) -> Tuple[float, float]:
    """Largest |difference| between a batch and its images one at a time: the ViT
    features, and the log-probabilities of the first generated token (prompt given)."""
    images = batch["image"]
    blip = model.blip
    feats_b = blip.vision_model(pixel_values=images).last_hidden_state
    feats_s = torch.cat([blip.vision_model(pixel_values=x[None]).last_hidden_state for x in images])
    ids = model.tokenizer([model.prompt] * len(images), return_tensors="pt").input_ids[:, :-1]  # drop [SEP], as generate
    ids[:, 0] = model.tokenizer.bos_token_id

    def logprobs(f, i):
        out = blip.text_decoder(input_ids=i, encoder_hidden_states=f, return_dict=True)
        return out.logits[:, -1].log_softmax(-1)

    lp_b = logprobs(feats_b, ids)
    lp_s = torch.cat([logprobs(feats_s[k:k + 1], ids[k:k + 1]) for k in range(len(images))])
    return (feats_b - feats_s).abs().max().item(), (lp_b - lp_s).abs().max().item()


def print_profile(task, model, batches, singles, a: argparse.Namespace) -> None:
    n = min(a.profile_images, len(singles))
    for label, fn, args, count in (("per-image", per_image_pass, (model, singles[:n], a), n),
                                   ("batched", batched_pass, (task, model, batches[:1]), len(batches[0]["image_id"]))):
        prof = cProfile.Profile()
        prof.enable()
        fn(*args)
        prof.disable()
        total = sum(v[2] for v in pstats.Stats(prof).stats.values())
        print(f"\nprofile ({label}: {count} image(s), cProfile, own time {total * 1e3 / count:.1f} ms/image "
              f"incl. profiler overhead); top functions by own time:")
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(a.profile_top)
        print("\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip()))

    # wall-clock split of one per-image call: the ViT forward vs the whole generate call
    blip = model.blip
    x = singles[0]["image"]
    reps = 20
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(reps):
            blip.vision_model(pixel_values=x)
        vit = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            model.generate(singles[0], num_beams=a.num_beams, max_length=a.max_len, min_length=a.min_len)
        gen = (time.perf_counter() - t0) / reps
        xb = batches[0]["image"]
        t0 = time.perf_counter()
        for _ in range(3):
            blip.vision_model(pixel_values=xb)
        vit_b = (time.perf_counter() - t0) / 3 / len(xb)
    print(f"\none per-image generate call: {gen * 1e3:.1f} ms, of which the ViT forward {vit * 1e3:.2f} ms "
          f"(batched ViT: {vit_b * 1e3:.2f} ms/image); the rest is up to {a.max_len} decoder steps "
          f"x {a.num_beams} beams, mostly per-step fixed cost")


# ---------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-images", type=int, default=128, help="images captioned by each path per trial")
    p.add_argument("--batch-size", type=int, default=32, help="images per valid_step call (batched path)")
    p.add_argument("--num-beams", type=int, default=DEFAULTS["num_beams"], help="beam search width (both paths)")
    p.add_argument("--max-len", type=int, default=DEFAULTS["max_len"], help="max tokens incl. the prompt (both paths)")
    p.add_argument("--min-len", type=int, default=DEFAULTS["min_len"], help="min tokens incl. the prompt (both paths)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--trials", type=int, default=3, help="trials, alternating batched / per-image")
    p.add_argument("--warmup", type=int, default=4, help="untimed per-image calls (plus one batched call) first")
    p.add_argument("--model-type", default="tiny", help="blip_caption model type whose YAML is the base config")
    p.add_argument("--image-size", type=int, default=64, help="model input size (the tiny YAML says 32)")
    p.add_argument("--hidden-size", type=int, default=None, help="width of both towers (default: the YAML's)")
    p.add_argument("--base-shapes", action="store_true", help="BLIP-base's shapes for both towers (patch 16)")
    p.add_argument("--num-layers", type=int, default=None, help="layers of both towers (default: the YAML's)")
    p.add_argument("--tokenizer", default="shapes", help="tokenizer (shapes: the demo's word-level one)")
    p.add_argument("--init-std", type=float, default=0.05,
                   help="redraw weight matrices from N(0, std) so captions depend on the image; 0 keeps HF's init")
    p.add_argument("--scene-size", type=int, default=64, help="side of the synthetic scenes before preprocessing")
    p.add_argument("--seed", type=int, default=0, help="model init and scene seed")
    p.add_argument("--cache", choices=("vlft", "default"), default="vlft",
                   help="beam-search cache: vlft's (cross-attention not re-copied per step) or transformers' default")
    p.add_argument("--profile", action="store_true", help="also profile both paths with cProfile")
    p.add_argument("--profile-images", type=int, default=8, help="per-image calls to profile")
    p.add_argument("--profile-top", type=int, default=20, help="rows of each profile to print")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if a.cache == "default":  # transformers' EncoderDecoderCache, reordered in full at every step
        import vlft.models.blip.blip_caption as blip_caption

        blip_caption.beam_search_cache = lambda *args, **kwargs: {}

    t0 = time.perf_counter()
    model, cfg = build_model(a)
    task = CaptionTask(num_beams=a.num_beams, max_len=a.max_len, min_len=a.min_len)
    expected = dict(num_beams=a.num_beams, max_length=a.max_len, min_length=a.min_len, use_nucleus_sampling=False,
                    repetition_penalty=1.0)
    assert all(task.decoding[k] == v for k, v in expected.items()), (task.decoding, expected)
    images = build_images(a)
    batches = make_batches(images, a.batch_size)
    singles = make_batches(images, 1)
    n_params = sum(p.numel() for p in model.parameters())
    v, t = cfg.vision_config, cfg.text_config
    print(f"blip_caption '{a.model_type}' (random init, init std {a.init_std or 'HF default'}), {n_params / 1e6:.2f}M params, "
          f"{a.image_size}x{a.image_size} px / patch {v.get('patch_size', 16)}, vision {v.get('num_hidden_layers')}x"
          f"{v.get('hidden_size')}, text {t.get('num_hidden_layers')}x{t.get('hidden_size')}, tokenizer {a.tokenizer} "
          f"({len(model.tokenizer)} tokens)")
    print(f"{a.num_images} images, batch {a.batch_size}; beam search num_beams={a.num_beams}, max_len={a.max_len}, "
          f"min_len={a.min_len}, {a.cache} cache; {a.trials} trials; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"set-up {time.perf_counter() - t0:.1f}s")

    # warm-up
    batched_pass(task, model, batches[:1])
    per_image_pass(model, singles[:a.warmup], a)

    seconds = {"batched": [], "per-image": []}  # per trial: wall seconds of each chunk of one batch
    cpu_seconds = {"batched": [], "per-image": []}
    captions: Dict[str, List[List[str]]] = {"batched": [], "per-image": []}
    load_before = os.getloadavg()[0]
    for trial in range(a.trials):
        for label in seconds:
            seconds[label].append([])
            cpu_seconds[label].append([])
            captions[label].append([])
        for k, batch in enumerate(batches):
            ids = batch["image_id"]
            runs = [("batched", batched_pass, (task, model, [batch])),
                    ("per-image", per_image_pass, (model, singles[ids[0]:ids[-1] + 1], a))]
            for label, fn, args in (runs if (trial + k) % 2 == 0 else runs[::-1]):
                out, wall, cpu = timed(fn, *args)
                assert len(out) == len(ids), (label, len(out))
                seconds[label][-1].append(wall)
                cpu_seconds[label][-1].append(cpu)
                captions[label][-1].extend(out)
        b, s = (a.num_images / sum(seconds[k][-1]) for k in ("batched", "per-image"))
        print(f"trial {trial + 1}: batched {b:8.3g} img/s   per-image {s:7.3g} img/s   ratio {b / s:6.2f}")
    load_after = os.getloadavg()[0]

    # ------------------------------------------------------------------ correctness
    cb, cs = captions["batched"][0], captions["per-image"][0]
    agree = sum(x == y for x, y in zip(cb, cs))
    stable = all(c == cb for c in captions["batched"]) and all(c == cs for c in captions["per-image"])
    lengths = [len(c.split()) for c in cb]
    feat_diff, lp_diff = batch_vs_single_numerics(model, batches[0])
    print(f"\ncaptions agree (batched vs per-image): {agree}/{a.num_images}; same in every trial: {stable}; "
          f"{len(set(cb))} distinct captions, {min(lengths)}-{max(lengths)} words")
    print(f"batch {len(batches[0]['image_id'])} vs one at a time, max |diff|: ViT features {feat_diff:.3g}, "
          f"first-step log-probs {lp_diff:.3g} (same prompt in every row: no padding)")
    for k, (x, y) in enumerate(zip(cb, cs)):
        if x != y:
            print(f"  image {k}: batched {x!r}\n  {'':{len(str(k)) + 7}} per-image {y!r}")
    print(f"e.g. image 0: {cb[0]!r}")

    # ------------------------------------------------------------------ figures
    n = a.num_images
    med = {k: statistics.median(n / sum(t) for t in v) for k, v in seconds.items()}
    cpu_med = {k: statistics.median(n / sum(t) for t in v) for k, v in cpu_seconds.items()}
    best = {k: max(n / sum(t) for t in v) for k, v in seconds.items()}
    sizes = [len(b["image_id"]) for b in batches]
    chunk = {k: statistics.median(m / t for tr in v for m, t in zip(sizes, tr)) for k, v in seconds.items()}
    print(f"\n{'img/s':34s} {'batched':>9s} {'per-image':>10s} {'ratio':>7s}")
    for label, v in (("wall, median of trials", med), ("wall, best trial", best),
                     (f"wall, median of {len(batches)}x{a.trials} chunks", chunk), ("CPU time, median of trials", cpu_med)):
        print(f"{label:34s} {v['batched']:9.3g} {v['per-image']:10.3g} {v['batched'] / v['per-image']:7.2f}")
    print(f"load average (1 min) before / after the trials: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} CPUs")
    busy = max(load_before, load_after) - 1.0  # about what else is running (this process counts as 1)
    if a.threads > 1 and busy + a.threads > (os.cpu_count() or 1) + 0.5:
        print(f"warning: about {busy:.1f} other busy process(es) share {os.cpu_count()} CPUs with {a.threads} threads: "
              f"the figures are unreliable (oversubscribed OpenMP); rerun when idle or with --threads 1")
    ratio = med["batched"] / med["per-image"]
    print(f"batched {med['batched']:.3g} img/s, per-image {med['per-image']:.3g} img/s, ratio {ratio:.2f} "
          f"(target >= 8: {'met' if ratio >= 8 else 'NOT met'})")

    if a.profile:
        print_profile(task, model, batches, singles, a)
    return 0 if agree == a.num_images else 1


if __name__ == "__main__":
    sys.exit(main())
