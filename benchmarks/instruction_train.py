"""Instruction tuning throughput of ``minigpt4qwen``.

CPU (always): the tiny model on shapes-chat conversations of 1-3 turns, training steps
(forward + backward + AdamW) with every batch padded to ``max_txt_len`` (the reference's
``padding="max_length"``) against padding to the longest conversation of the batch (vlft's
default): samples/s and the fraction of the tokens computed that are padding.

GPU (when CUDA is there, or ``--gpu``): EVA ViT-g (fp16, frozen) + the BLIP-2 Q-Former
(frozen) + ``llm_proj`` + a randomly initialised Qwen2.5-shaped LLM (0.5B or 3B, bf16,
frozen), under DeepSpeed ZeRO-2 bf16 on one GPU, batch 8: samples/s and peak memory. The
reference's own table (EVA ViT-g, Qwen-7B-Chat, bf16, 8 GPUs, batch 32): ZeRO-1 21.46 GB,
ZeRO-2 22.26 GB and 8.51 s/epoch, ZeRO-3 22.37 GB and 7.94 s/epoch.

    OMP_NUM_THREADS=1 python benchmarks/instruction_train.py --threads 1
    python benchmarks/instruction_train.py --gpu --llm 3b
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

QWEN25 = {  # Qwen2.5-0.5B / -3B shapes (config.json of the HF repos)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, tie_word_embeddings=True),
}


def build(overrides: dict):
    from omegaconf import OmegaConf

    from vlft.common.utils import resolve_config_file
    from vlft.models.minigpt4qwen import MiniGPT4Qwen

    torch.manual_seed(0)
    base = OmegaConf.load(resolve_config_file("configs/models/minigpt4qwen/tiny.yaml")).model
    return MiniGPT4Qwen.from_config(OmegaConf.merge(base, overrides))


def batches(n: int, batch: int, image_size: int, vis):
    from vlft.datasets.synthetic_chat import ShapesChatDataset

    data = ShapesChatDataset(vis, split="train", info={"num_samples": n * batch},
                             build_info={"image_size": image_size, "max_turns": 3})
    return [data.collater([data[i] for i in range(k * batch, (k + 1) * batch)]) for k in range(n)]


def padding_fraction(model, batch) -> float:
    convs, counts = model.conversations(batch), model.images_per_sample(batch, len(batch["conversation"]))
    lengths = [len(model.chat_encoder.encode(c, k).input_ids) for c, k in zip(convs, counts)]
    width = model.chat_encoder.max_txt_len if model.padding == "max_length" else max(lengths)
    return 1 - sum(lengths) / (width * len(lengths))


def cpu_benchmark(steps: int, batch: int, max_txt_len: int) -> None:
    from vlft.processors.blip_processors import BlipImageEvalProcessor

    data = batches(steps + 2, batch, 32, BlipImageEvalProcessor(image_size=32))
    print(f"tiny minigpt4qwen, CPU, {torch.get_num_threads()} thread(s), batch {batch}, max_txt_len {max_txt_len}, "
          f"{steps} steps after 2 warm-up steps")
    for padding in ("max_length", "longest"):
        model = build({"padding": padding, "max_txt_len": max_txt_len, "freeze_llm": False}).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for i, b in enumerate(data):
            start = time.perf_counter()
            loss = model(b)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - start)
        pad = statistics.mean(padding_fraction(model, b) for b in data[2:])
        print(f"  pad to {padding:<10}  {batch / statistics.median(times):8.1f} samples/s   "
              f"padding {100 * pad:5.1f}% of the tokens")


def gpu_benchmark(llm: str, steps: int, batch: int, zero: int) -> None:
    import deepspeed

    from vlft.common import dist
    from vlft.processors.blip_processors import BlipImageEvalProcessor

    dist.init_single_process_group("nccl")
    cfg = {"vit_model": "eva_clip_g", "image_size": 224, "vit_precision": "fp16", "num_query_token": 32,
           "qformer_config": {}, "llm_config": {"model_type": "qwen2", "max_position_embeddings": 2048, **QWEN25[llm]},
           "llm_precision": "bf16", "max_txt_len": 512}
    model = build(cfg).cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ds = {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
          "zero_optimization": {"stage": zero}, "zero_allow_untested_optimizer": True, "gradient_clipping": 1.0}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    data = batches(steps + 3, batch, 224, BlipImageEvalProcessor(image_size=224))
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i, b in enumerate(data):
        b = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in b.items()}
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = engine(b)["loss"]
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    n_all = sum(p.numel() for p in model.parameters())
    print(f"EVA ViT-g + Q-Former + Qwen2.5-{llm}-shaped LLM ({n_all / 1e9:.2f} B parameters), bf16, ZeRO-{zero}, "
          f"batch {batch} on 1 GPU: {batch / statistics.median(times):.1f} samples/s, peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-txt-len", type=int, default=256)
    parser.add_argument("--gpu", action="store_true", help="also the GPU benchmark (default: when CUDA is there)")
    parser.add_argument("--llm", choices=sorted(QWEN25), default="0.5b")
    parser.add_argument("--zero", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu_benchmark(args.steps, args.batch, args.max_txt_len)
    if args.gpu or torch.cuda.is_available():
        if not torch.cuda.is_available():
            print("no GPU here: the GPU benchmark is skipped")
            return
        gpu_benchmark(args.llm, args.steps, 8, args.zero)


if __name__ == "__main__":
    main()
