"""BLIP caption fine-tuning step: vlft's model against a plain transformers loop.

    python benchmarks/blip_caption_train.py --hidden-size 256 --num-layers 4 --image-size 224

Three loops train copies of one random ``blip_caption`` (the ``tiny`` YAML with the
sizes below; the shapes tokenizer) on the same fixed batch, each doing forward,
backward, a fused AdamW step and ``zero_grad(set_to_none=True)``:

* ``transformers``: ``BlipForConditionalGeneration(pixel_values, input_ids,
  attention_mask, labels)`` with the batch tokenised once, before timing, as a plain
  training script would (the labels as vlft makes them: ``[DEC]`` first, padding and
  prompt at -100). This is the baseline of every ratio.
* ``vlft eager``: ``BlipCaption.forward(samples)``, which tokenises the captions every
  step as the runner's loop does, with transformers' eager attention (the default,
  ``model.attn_implementation: eager``);
* ``vlft sdpa``: the same with ``model.attn_implementation: sdpa``
  (``vlft/models/blip/sdpa.py``);
* with ``--compile``, ``vlft sdpa+compile``: also ``model.compile: [blip.vision_model]``
  (``torch.compile``, inductor; the compilation happens in the warm-up and is printed).

The loops take turns, ``--trials`` times ``--steps`` timed steps after ``--warmup``,
with dropout off (``model.eval()`` during the step would also disable it; here the
configs' dropouts are set to 0 so that all three compute exactly the same function).
Printed: the median ms/step of each, its ratio to the baseline, and the largest loss
difference from the baseline at the first step (fp32: within 1e-6).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import vlft  # noqa: E402,F401
from vlft.common.registry import registry  # noqa: E402
from vlft.datasets.synthetic_shapes import make_scene, scene_caption  # noqa: E402
from vlft.models.blip.sdpa import set_blip_attention  # noqa: E402
from vlft.processors.blip_processors import BlipImageEvalProcessor  # noqa: E402


# dropout off everywhere, so that the three loops compute exactly the same function
TOWERS = {"vision_config": {"attention_dropout": 0.0, "patch_size": 16},
          "text_config": {"attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0}}


def build(a: argparse.Namespace):
    cls = registry.get_model_class("blip_caption")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.update(model_type="tiny", load_pretrained=False, load_finetuned=False, tokenizer="shapes",
               image_size=a.image_size)
    for tower, extra in TOWERS.items():
        cfg[tower].update(hidden_size=a.hidden_size, intermediate_size=4 * a.hidden_size,
                          num_hidden_layers=a.num_layers, num_attention_heads=max(1, a.hidden_size // 64), **extra)
    cfg.vision_config.image_size = a.image_size
    torch.manual_seed(0)
    return cls.from_config(cfg)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="add a loop with the ViT compiled (torch.compile)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    model = build(a).train()
    proc = BlipImageEvalProcessor(image_size=a.image_size)
    samples = {"image": torch.stack([proc(make_scene(i)["image"]) for i in range(a.batch_size)]),
               "text_input": [model.prompt + scene_caption(i) for i in range(a.batch_size)]}
    text = model.tokenize(samples["text_input"])
    ids = text.input_ids.clone()
    ids[:, 0] = model.tokenizer.bos_token_id
    labels = ids.masked_fill(ids == model.tokenizer.pad_token_id, -100)
    labels[:, : model.prompt_length] = -100
    hf_inputs = dict(pixel_values=samples["image"], input_ids=ids, attention_mask=text.attention_mask, labels=labels)

    hf = copy.deepcopy(model.blip)
    sdpa = copy.deepcopy(model)
    set_blip_attention(sdpa, "sdpa")
    loops = {"transformers": (hf, lambda: hf(**hf_inputs).loss),
             "vlft eager": (model, lambda: model(samples)["loss"]),
             "vlft sdpa": (sdpa, lambda: sdpa(samples)["loss"])}
    if a.compile:
        from vlft.models.adapters import compile_modules

        compiled = copy.deepcopy(sdpa)
        compile_modules(compiled, ["blip.vision_model"])
        loops["vlft sdpa+compile"] = (compiled, lambda: compiled(samples)["loss"])
    with torch.no_grad():
        first = {name: float(step()) for name, (_, step) in loops.items()}
    opts = {name: torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-5, fused=True)
            for name, (m, _) in loops.items()}

    def run(name: str, n: int) -> float:
        module, step = loops[name]
        t0 = time.perf_counter()
        for _ in range(n):
            step().backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / n

    for name in loops:
        t0 = time.perf_counter()
        run(name, a.warmup)
        if name.endswith("compile"):
            print(f"warm-up of {name} (compiling): {time.perf_counter() - t0:.1f}s")
    times = {name: [] for name in loops}
    for trial in range(a.trials):
        for name in (list(loops) if trial % 2 == 0 else list(loops)[::-1]):
            times[name].append(run(name, a.steps))
    n_params = sum(q.numel() for q in model.parameters())
    tokens = (a.image_size // 16) ** 2 + 1
    print(f"blip_caption random, {n_params / 1e6:.1f}M parameters: both towers {a.num_layers} x {a.hidden_size}, "
          f"{a.image_size} px ({tokens} image tokens), batch {a.batch_size}, fp32, {a.threads} thread(s), "
          f"torch {torch.__version__}; {a.trials} trials x {a.steps} steps")
    base = statistics.median(times["transformers"])
    print(f"{'loop':18s} {'ms/step':>9s} {'vs transformers':>16s} {'|loss - transformers| at step 1':>32s}")
    for name in loops:
        med = statistics.median(times[name])
        print(f"{name:18s} {med * 1e3:9.1f} {med / base:16.3f} {abs(first[name] - first['transformers']):32.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
