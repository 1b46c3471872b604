"""The causal-LM loss at labelled positions only (``model.loss_logits: labelled``, the
default) against the LLM's own ``forward(labels=...)`` (``all``).

    python benchmarks/lm_loss.py                  # both shapes, 1 thread
    python benchmarks/lm_loss.py --labelled 0.5 --steps 5

A training step of a frozen Qwen2 LLM as instruction tuning runs it (MiniGPT4-Qwen's
default trains ``llm_proj`` only, so the backward pass goes through the frozen LLM down
to its input embeddings), at the same proportions as two real models, scaled down so
that one CPU thread runs a step in about a second: the share of ``lm_head`` in the
arithmetic and of the logits in the memory scale with vocab / (layers x width), and both
are kept.

* ``qwen7b/16``: Qwen-7B's shape (width 4096, 32 layers, MLP 11008, vocab 151,936) at
  width / 16, layers / 4 and vocab / 64: ``lm_head`` is 8% of the weights, as in Qwen-7B
  (622 M of 7.7 B).
* ``qwen2.5-0.5b/4``: Qwen2.5-0.5B (896, 24 layers, MLP 4864, vocab 151,936) at width / 4,
  layers / 4, vocab / 16: ``lm_head`` (tied to the embedding) is 27.5% of the weights, as there.

Batch ``--batch`` x ``--length`` positions, right-padded to lengths between 60% and 100%
of ``--length``, with a ``--labelled`` share of each sample's tokens as targets (its end:
the answer turns; the rest, query tokens, system text and questions, at -100). Printed
per shape: the median ms per step (``--steps`` after one warm-up, the two variants taking
turns), the bytes autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``,
unique storages, deterministic), the loss difference (fp32: within 1e-6) and the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vlft.models.lm_loss import causal_lm_loss  # noqa: E402

SHAPES = {
    "qwen7b/16": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=2374),
    "qwen2.5-0.5b/4": dict(hidden_size=224, intermediate_size=1216, num_hidden_layers=6, num_attention_heads=14,
                           num_key_value_heads=2, vocab_size=9496, tie_word_embeddings=True),
}


def build(shape: dict):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=4096, **shape)).train()
    llm.requires_grad_(False)
    return llm


def make_batch(batch: int, length: int, hidden: int, vocab: int, labelled: float):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(int(0.6 * length), length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    starts = (lengths.float() * (1 - labelled)).long()
    labels[(torch.arange(length)[None] < starts[:, None]) | (mask == 0)] = -100
    return torch.randn(batch, length, hidden, generator=g) * 0.02, mask, labels


def saved_bytes(step) -> int:
    seen = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--labelled", type=float, default=0.3, help="share of each sample's tokens that are targets")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"frozen Qwen2-shaped LLM, backward to the inputs, CPU {args.threads} thread(s), batch {args.batch} x "
          f"{args.length}, {100 * args.labelled:.0f}% of each sample's tokens labelled, median of {args.steps} steps")
    print(f"{'shape':<16} {'lm_head share':>13} {'all ms':>9} {'labelled ms':>12} {'ratio':>6} "
          f"{'all saved MB':>13} {'labelled MB':>12} {'ratio':>6} {'|dloss|':>8}")
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        llm = build(shape)
        head = shape["hidden_size"] * shape["vocab_size"]
        share = head / sum(p.numel() for p in llm.parameters())  # tied: the embedding counts once
        embeds, mask, labels = make_batch(args.batch, args.length, shape["hidden_size"], shape["vocab_size"],
                                          args.labelled)
        losses, times, saved = {}, {"all": [], "labelled": []}, {}

        def step(mode):
            x = embeds.clone().requires_grad_(True)
            loss = causal_lm_loss(llm, x, mask, labels, mode)
            loss.backward()
            losses[mode] = loss.item()

        for mode in times:
            step(mode)  # warm-up
            saved[mode] = saved_bytes(lambda: causal_lm_loss(llm, embeds.clone().requires_grad_(True), mask, labels, mode))
        for i in range(args.steps):
            for mode in (("all", "labelled") if i % 2 == 0 else ("labelled", "all")):
                start = time.perf_counter()
                step(mode)
                times[mode].append(time.perf_counter() - start)
        ms = {m: 1e3 * statistics.median(t) for m, t in times.items()}
        print(f"{name:<16} {100 * share:12.1f}% {ms['all']:9.1f} {ms['labelled']:12.1f} {ms['labelled'] / ms['all']:6.3f} "
              f"{saved['all'] / 2**20:13.1f} {saved['labelled'] / 2**20:12.1f} {saved['labelled'] / saved['all']:6.3f} "
              f"{abs(losses['all'] - losses['labelled']):8.1e}")


if __name__ == "__main__":
    main()
