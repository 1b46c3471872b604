"""Chat with an instruction-tuned model in the terminal (MiniGPT4Qwen's CLI demo).

    python -m vlft.chat --cfg-path projects/demo/chat_shapes.yaml --ckpt run/checkpoint_best.pth
    vlft-chat --cfg-path output/.../hf_model/model.yaml --cpu-only

``--cfg-path`` is a project YAML (its ``model:`` section, and the evaluation image
processor of its first dataset), a model default YAML, or the ``model.yaml`` of an
export; ``--ckpt`` loads a vlft checkpoint (or a released MiniGPT4Qwen ``.pth``) on top;
``--options model.key=value`` overrides. Replies stream token by token (transformers'
``TextIteratorStreamer``) unless ``--no-stream``.

Commands (the reference's): ``:help`` / ``:h``, ``:exit`` / ``:quit`` / ``:q``,
``:clear`` / ``:cl`` (the screen), ``:clear-his`` / ``:clh`` (the conversation and its
images), ``:history`` / ``:his``, ``:img PATH[,PATH...]`` (images for the next message,
several allowed; each becomes ``<Img><ImageHere></Img>`` before it), ``:conf`` (show the
generation settings), ``:conf key=value`` (change one), ``:reset-conf``, ``:seed N``.
"""
from __future__ import annotations

import argparse
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

HELP = """Commands:
  :help / :h              this help
  :exit / :quit / :q      leave
  :clear / :cl            clear the screen
  :clear-his / :clh       forget the conversation and its images
  :history / :his         show the conversation
  :img PATH[,PATH...]     images for the next message (several allowed)
  :conf [key=value]       show or change the generation settings
  :reset-conf             default generation settings
  :seed N                 set the random seed (sampling)
Anything else is your message."""
DEFAULT_GENERATION = {"max_new_tokens": 256, "num_beams": 1, "do_sample": False, "top_p": 0.8, "temperature": 1.0,
                      "repetition_penalty": 1.0}


def load_chat_model(cfg_path: str, ckpt: Optional[str] = None, device: str = "cpu",
                    options: Sequence[str] = ()) -> Tuple[Any, Callable]:
    """The model a YAML describes (with ``ckpt`` on top) and its evaluation image processor."""
    from omegaconf import OmegaConf

    import vlft.datasets.builders  # noqa: F401  (registers the builders)
    import vlft.models  # noqa: F401  (registers the models)
    import vlft.processors  # noqa: F401
    from vlft.common.config import model_defaults, parse_options
    from vlft.common.registry import registry
    from vlft.common.utils import resolve_config_file, resolve_model_paths
    from vlft.models.adapters import apply_finetuning
    from vlft.runners.checkpoint import load_model_weights

    from pathlib import Path

    from vlft.common.validate_common import ConfigError

    if not Path(cfg_path).is_file():
        raise ConfigError(f"--cfg-path: config file not found: {cfg_path}")
    if ckpt and not Path(ckpt).exists():
        raise FileNotFoundError(f"--ckpt: no checkpoint at {ckpt}")
    raw = OmegaConf.merge(OmegaConf.load(cfg_path), parse_options(list(options)))
    if raw.get("model") is None or not raw.model.get("arch"):
        raise ValueError(f"{cfg_path} has no model section with an arch")
    section = OmegaConf.merge(model_defaults(raw.model), raw.model)
    model_cls = registry.get_model_class(section.arch)
    model = apply_finetuning(model_cls.from_config(resolve_model_paths(section)), section)
    if ckpt:
        loader = getattr(model, "load_checkpoint", None)
        if section.get("peft") or loader is None:
            load_model_weights(model, ckpt)
        else:
            loader(ckpt)
    proc_cfg = None
    for ds in (raw.get("datasets") or {}).values():
        proc_cfg = ((ds or {}).get("vis_processor") or {}).get("eval") or proc_cfg
        if proc_cfg is not None:
            break
    if proc_cfg is None and section.get("model_type"):
        default = OmegaConf.load(resolve_config_file(model_cls.PRETRAINED_MODEL_CONFIG_DICT[section.model_type]))
        proc_cfg = ((default.get("preprocess") or {}).get("vis_processor") or {}).get("eval")
    if proc_cfg is None:
        proc_cfg = OmegaConf.create({"name": "blip_image_eval", "image_size": int(section.get("image_size", 224))})
    vis = registry.get_processor_class(proc_cfg.name).from_config(proc_cfg)
    return model.to(torch.device(device)).eval(), vis


class ChatSession:
    """The conversation state and the commands; ``handle`` takes one input line and returns
    what to print (``None`` to leave). Replies go through ``model.chat``."""

    def __init__(self, model, vis_processor, stream: bool = True, write: Callable[[str], None] = None):
        self.model, self.vis, self.stream = model, vis_processor, stream
        self.write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        self.history: List[Dict[str, str]] = []
        self.images: List[torch.Tensor] = []
        self.pending: List[torch.Tensor] = []
        self.generation = dict(DEFAULT_GENERATION)

    def handle(self, line: str) -> Optional[str]:
        line = line.strip()
        if not line:
            return ""
        if not line.startswith(":"):
            return self.reply(line)
        cmd, _, arg = line.partition(" ")
        if cmd in (":exit", ":quit", ":q"):
            return None
        if cmd in (":help", ":h"):
            return HELP
        if cmd in (":clear", ":cl"):
            return "\033[2J\033[H"
        if cmd in (":clear-his", ":clh"):
            self.history, self.images, self.pending = [], [], []
            return "conversation cleared"
        if cmd in (":history", ":his"):
            return "\n".join(f"{m['role']}: {m['content']}" for m in self.history) or "(no conversation yet)"
        if cmd in (":img", ":image"):
            return self.load_images(arg)
        if cmd == ":conf":
            return self.configure(arg)
        if cmd == ":reset-conf":
            self.generation = dict(DEFAULT_GENERATION)
            return self.configure("")
        if cmd == ":seed":
            if not arg.strip().isdigit():
                return "usage: :seed N"
            torch.manual_seed(int(arg))
            return f"seed set to {int(arg)}"
        return f"unknown command {cmd}; :help lists them"

    def load_images(self, arg: str) -> str:
        from vlft.datasets.image_io import load_image

        paths = [p.strip() for p in arg.split(",") if p.strip()]
        if not paths:
            return "usage: :img PATH[,PATH...]"
        for path in paths:
            image = load_image(path)
            if image is None:
                return f"cannot read image {path}"
            self.pending.append(self.vis(image))
        return f"{len(self.pending)} image(s) ready for your next message"

    def configure(self, arg: str) -> str:
        if arg.strip():
            key, _, value = arg.partition("=")
            key = key.strip()
            if key not in DEFAULT_GENERATION or not value.strip():
                return f"usage: :conf key=value with key one of {', '.join(DEFAULT_GENERATION)}"
            kind = type(DEFAULT_GENERATION[key])
            text = value.strip()
            self.generation[key] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
        return "  ".join(f"{k}={v}" for k, v in self.generation.items())

    def reply(self, text: str) -> str:
        marks = "<Img><ImageHere></Img>" * len(self.pending)
        self.history.append({"role": "user", "content": f"{marks} {text}" if marks else text})
        self.images += self.pending
        self.pending = []
        images = torch.stack(self.images) if self.images else None
        if not self.stream:
            answer = self.model.chat(images, self.history, **self.generation)
        else:
            from transformers import TextIteratorStreamer

            streamer = TextIteratorStreamer(self.model.tokenizer, skip_prompt=True, skip_special_tokens=True)
            result: Dict[str, str] = {}
            worker = threading.Thread(target=lambda: result.update(
                answer=self.model.chat(images, self.history, streamer=streamer, **self.generation)))
            worker.start()
            for chunk in streamer:
                self.write(chunk)
            worker.join()
            self.write("\n")
            answer = result.get("answer", "")
        self.history.append({"role": "assistant", "content": answer})
        return answer


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Chat with an instruction-tuned vlft model")
    parser.add_argument("--cfg-path", required=True, help="project YAML, model default YAML or an export's model.yaml")
    parser.add_argument("--ckpt", default=None, help="checkpoint to load on top (vlft or released MiniGPT4Qwen .pth)")
    parser.add_argument("--cpu-only", action="store_true", help="run on the CPU even when a GPU is there")
    parser.add_argument("--no-stream", action="store_true", help="print each reply when it is complete")
    parser.add_argument("--options", nargs="+", default=[], help="model.key=value overrides")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure (also VLFT_DEBUG=1)")
    args = parser.parse_args(argv)
    from vlft.common.errors import run_cli

    return run_cli(lambda: _chat(args), debug=args.debug)


def _chat(args: argparse.Namespace) -> int:
    device = "cuda" if torch.cuda.is_available() and not args.cpu_only else "cpu"
    model, vis = load_chat_model(args.cfg_path, args.ckpt, device, args.options)
    session = ChatSession(model, vis, stream=not args.no_stream)
    print(f"vlft chat ({type(model).__name__} on {device}); :help for commands, :q to leave")
    while True:
        try:
            line = input("User> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line.strip().startswith(":") and line.strip() and session.stream:
            sys.stdout.write("Assistant> ")
            sys.stdout.flush()
        out = session.handle(line)
        if out is None:
            return 0
        if line.strip().startswith(":"):
            print(out)
        elif line.strip() and not session.stream:
            print(f"Assistant> {out}")


if __name__ == "__main__":
    sys.exit(main())
