"""Export of a ``minigpt4qwen`` model: what other tools can load without vlft's training code.

``save_hf(model, out_dir)`` writes::

    out_dir/
      llm/                  the LLM in HF format (LoRA merged when merge_lora) + its tokenizer
      llm_adapter/          the LoRA adapter in peft's format (only with get_lora)
      visual.safetensors    ViT + ln_vision, query tokens, Q-Former and llm_proj (vlft names),
                            and the LoRA weights when they are not merged
      model.yaml            a model section that rebuilds this model from the two above
                            (python -m vlft.chat --cfg-path out_dir/model.yaml)

The vision side keeps vlft's names (transformers' ``Blip2VisionModel`` /
``Blip2QFormerModel`` ones); ``vlft.models.convert.minigpt4qwen.to_reference_checkpoint``
renames them to the reference's LAVIS names.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf


def _rebuild_section(model, out: Path, lora_kept: bool) -> Dict[str, Any]:
    section = {k: v for k, v in dict(getattr(model, "config_section", {}) or {}).items()
               if k not in ("peft", "freeze", "unfreeze")}
    section.update(arch="minigpt4qwen", llm_model=str(out / "llm"), llm_tokenizer=None, llm_config=None,
                   load_pretrained=False, pretrained="", vit_pretrained=None, load_finetuned=True,
                   finetuned=str(out / "visual.safetensors"), get_lora=lora_kept, trust_remote_code=section.get(
                       "trust_remote_code", False))
    return section


def save_hf(model, out_dir: str, merge_lora: bool = True) -> Path:
    """Write ``out_dir`` as the module docstring shows; returns it."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    llm = model.llm_model
    lora = hasattr(llm, "peft_config")
    if lora:
        llm.save_pretrained(str(out / "llm_adapter"))
        llm = copy.deepcopy(llm).merge_and_unload() if merge_lora else copy.deepcopy(llm).unload()
    llm.save_pretrained(str(out / "llm"))
    model.tokenizer.save_pretrained(str(out / "llm"))
    keep_lora = lora and not merge_lora  # unmerged: the LoRA weights travel with the visual side
    visual = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
              if not k.startswith("llm_model.") or (keep_lora and ".lora_" in k)}
    save_file(visual, str(out / "visual.safetensors"), metadata={"format": "pt", "model": "minigpt4qwen"})
    section = _rebuild_section(model, out, keep_lora)
    if section.get("model_type") is None:
        section.pop("model_type", None)
    OmegaConf.save(OmegaConf.create({"model": section}), out / "model.yaml")
    return out
