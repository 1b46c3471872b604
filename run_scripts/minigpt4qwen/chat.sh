#!/usr/bin/env bash
# Chat in the terminal (the reference's CLI demo): bash run_scripts/minigpt4qwen/chat.sh --ckpt path/to/checkpoint_best.pth [--cpu-only]
python -m vlft.chat --cfg-path projects/minigpt4qwen/train/minigpt4qwen.yaml "$@"
