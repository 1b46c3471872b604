"""LAVIS's loading API: ``load_model``, ``load_model_and_preprocess``, ``model_zoo``.

    from vlft.models import load_model_and_preprocess
    model, vis_processors, txt_processors = load_model_and_preprocess(
        name="blip_caption", model_type="tiny", is_eval=True, device="cpu")
    caption = model.generate({"image": vis_processors["eval"](image).unsqueeze(0)})
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import OmegaConf

from vlft.common.registry import registry


def _default_config(name: str, model_type: str):
    model_cls = registry.get_model_class(name)
    return model_cls, OmegaConf.load(model_cls.default_config_path(model_type))


def load_model(name: str, model_type: str, is_eval: bool = False, device: str = "cpu", checkpoint: Optional[str] = None):
    """A registered model built from its default YAML for ``model_type`` (weights as that
    YAML says: relative paths under ``$VLFT_CACHE_ROOT``, URLs downloaded once into it),
    optionally with a checkpoint's weights on top."""
    from vlft.common.utils import resolve_model_paths
    from vlft.models.adapters import set_attention

    model_cls, cfg = _default_config(name, model_type)
    model_cfg = cfg.model
    model_cfg.model_type = model_type
    model = model_cls.from_config(resolve_model_paths(model_cfg))
    set_attention(model, model_cfg.get("attn_implementation"))
    if checkpoint:
        model.load_checkpoint(checkpoint)
    if is_eval:
        model.eval()
    return model.to(torch.device(device))


def load_preprocess(preprocess_cfg: Optional[Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``({"train": vis, "eval": vis}, {"train": txt, "eval": txt})`` from a ``preprocess:`` section."""
    import vlft.processors  # noqa: F401  (registers the processors)

    def build(section) -> Dict[str, Any]:
        out = {}
        for split in ("train", "eval"):
            proc_cfg = (section or {}).get(split)
            out[split] = registry.get_processor_class(proc_cfg.name).from_config(proc_cfg) if proc_cfg else None
        return out

    preprocess_cfg = preprocess_cfg or {}
    return build(preprocess_cfg.get("vis_processor")), build(preprocess_cfg.get("text_processor"))


def load_model_and_preprocess(name: str, model_type: str, is_eval: bool = False, device: str = "cpu"):
    """The model and its image / text processors for training and evaluation."""
    model = load_model(name, model_type, is_eval=is_eval, device=device)
    _, cfg = _default_config(name, model_type)
    vis_processors, txt_processors = load_preprocess(cfg.get("preprocess"))
    return model, vis_processors, txt_processors


class ModelZoo:
    """Every registered architecture and its model types (``print(model_zoo)``)."""

    def __iter__(self):
        for name in registry.list_models():
            yield name, list(getattr(registry.get_model_class(name), "PRETRAINED_MODEL_CONFIG_DICT", {}))

    def __str__(self) -> str:
        rows = list(self)
        width = max((len(n) for n, _ in rows), default=12)
        lines = [f"{'Architectures':<{width}}  Types", "=" * (width + 40)]
        lines += [f"{n:<{width}}  {', '.join(types)}" for n, types in rows]
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(registry.list_models())


model_zoo = ModelZoo()
