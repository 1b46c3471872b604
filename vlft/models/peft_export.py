"""LoRA adapters in peft's own terms: one adapter per transformers model inside a vlft model.

``model.peft`` wraps the whole vlft model, so peft's keys carry vlft's attribute path
(``base_model.model.blip.text_decoder...lora_A.weight``) and its config names vlft's class.
peft matches an adapter to a model by module path, so that file loaded onto
``BlipForConditionalGeneration`` matches nothing (a "missing adapter keys" warning and
LoRA B left at 0). Training keeps that wrapping (checkpoints, resume and
``run.lr_multipliers`` patterns use its names); the export rewrites it per *part*, a
transformers model inside the vlft model (``BaseModel.peft_parts``):

- the keys under the part's path, made relative to it (as peft names them when it wraps
  that transformers model itself), in ``<folder>/adapter_model.safetensors``;
- ``adapter_config.json``: ``target_modules`` / ``modules_to_save`` as names in the part,
  ``base_model_name_or_path`` naming the base, ``auto_mapping`` naming the transformers class;
- ``README.md``: which base it expects and the lines that load it with plain peft.

The base is the model *before* LoRA, written by vlft as ``hf_base/`` (the model's
``save_hf`` format; a part may name a sub-folder or an attribute of it, e.g. BLIP-2's LLM
is ``Blip2ForConditionalGeneration.from_pretrained(hf_base).language_model``). LoRA a
part cannot hold (no part contains it) goes to ``adapter_vlft/``, vlft's own names, which
loads with ``PeftModel.from_pretrained(<the vlft model>, ...)``.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeftPart:
    """A transformers model inside a vlft model that gets its own adapter folder."""

    folder: str  #: the adapter folder in the export directory (``adapter``, ``adapter_llm``)
    path: str  #: its attribute path in the vlft model; "" when the vlft model keeps transformers' names
    hf_class: type  #: the transformers class the adapter loads onto
    base: str = "hf_base"  #: the base's directory, relative to the export directory
    base_attr: str = ""  #: the base is this attribute of ``hf_class.from_pretrained(base)`` (BLIP-2's LLM)
    base_class: Optional[type] = None  #: the class that loads ``base`` when it is not ``hf_class``
    source: str = ""  #: the id / directory vlft read this model from (named in the README)


def _peft_holders(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(vlft path, PeftModel) for the peft wrapper around the model and any inside it
    (MiniGPT4-Qwen's ``get_lora`` wraps ``llm_model`` only)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return [("", model)]
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PeftModel)]


def has_lora(model: nn.Module) -> bool:
    return bool(_peft_holders(model))


def _lora_modules(holder: nn.Module, prefix: str) -> Tuple[List[str], List[str], List[str]]:
    """(LoRA layers, modules_to_save wrappers, plain modules) under ``prefix`` of a
    PeftModel, named relative to it; modules inside a LoRA layer or wrapper are skipped."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    layers, saved, plain, inside = [], [], [], []
    for name, module in holder.named_modules():
        if not name.startswith(prefix) or any(name.startswith(p + ".") for p in inside):
            continue
        rel = name[len(prefix):]
        if isinstance(module, BaseTunerLayer):
            layers.append(rel)
        elif isinstance(module, ModulesToSaveWrapper):
            saved.append(rel)
        else:
            plain.append(rel)
            continue
        inside.append(name)
    return layers, saved, plain


def _names_for(chosen: Sequence[str], others: Sequence[str]) -> List[str]:
    """peft's ``target_modules`` for exactly ``chosen``: their last names when those match
    nothing else (peft: the name or a ``.name`` suffix), their full paths otherwise."""
    short = sorted({n.rsplit(".", 1)[-1] for n in chosen})
    if not any(o == s or o.endswith("." + s) for o in others for s in short):
        return short
    return sorted(chosen)


def _holder_for(model: nn.Module, part: PeftPart) -> Optional[Tuple[nn.Module, str]]:
    """The PeftModel holding ``part``'s LoRA and the key prefix of the part inside it."""
    for path, holder in _peft_holders(model):
        if path == "":  # the wrapper around the whole vlft model
            return holder, "base_model.model." + (part.path + "." if part.path else "")
        if path == part.path:  # a wrapper around the part itself
            return holder, "base_model.model."
    return None


def _readme(part: PeftPart, out_dir: Path, config, n_layers: int, note: str) -> str:
    base = Path(out_dir) / part.base
    load_base = f"{(part.base_class or part.hf_class).__name__}.from_pretrained({str(base)!r})"
    if part.base_attr:
        load_base += f".{part.base_attr}"
    imports = sorted({(part.base_class or part.hf_class).__name__, part.hf_class.__name__})
    lines = [
        f"# LoRA adapter for transformers' `{part.hf_class.__name__}` (written by vlft)", "",
        f"Keys and `target_modules` are {part.hf_class.__name__}'s module names (the vlft model's "
        f"`{part.path or '<root>'}`), so plain peft loads it. Base: `{base}` "
        f"{'(its `' + part.base_attr + '`) ' if part.base_attr else ''}written by vlft, the model as it was "
        "before LoRA (frozen weights).", "",
        "```python", "from peft import PeftModel", f"from transformers import {', '.join(imports)}", "",
        f"base = {load_base}", f"model = PeftModel.from_pretrained(base, {str(Path(out_dir) / part.folder)!r})", "```", "",
        f"LoRA layers: {n_layers}; r = {config.r}, alpha = {config.lora_alpha}; target_modules: {config.target_modules}; "
        f"modules_to_save: {config.modules_to_save}.",
    ]
    if part.source:
        lines += ["", f"vlft built this model from `{part.source}`" + (
            " (`base_model_name_or_path`); that id loads the same weights unless vlft's config changed them "
            "(e.g. a `finetuned` checkpoint), the base above always does." if part.base_attr else ".")]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def save_part(model: nn.Module, part: PeftPart, out_dir: Path, note: str = "") -> Optional[Tuple[Path, Set[str]]]:
    """Write ``part``'s adapter; returns (folder, the vlft-side LoRA module names it holds),
    or None when the part has no LoRA."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    found = _holder_for(model, part)
    if found is None:
        return None
    holder, prefix = found
    layers, saved, plain = _lora_modules(holder, prefix)
    if not layers and not saved:
        return None
    # hf_base already holds any resized embedding table: no full embedding copies in the adapter
    state = get_peft_model_state_dict(holder, save_embedding_layers=False)
    relative = {"base_model.model." + k[len(prefix):]: v.detach().contiguous().clone()
                for k, v in state.items() if k.startswith(prefix)}
    config = copy.deepcopy(holder.peft_config["default"])
    config.target_modules = _names_for(layers, plain + saved) if layers else []
    config.modules_to_save = _names_for(saved, plain + layers) if saved else None
    # a model inside another's export (BLIP-2's LLM) is named by the id vlft read it from, if any
    config.base_model_name_or_path = part.source if part.base_attr and part.source else str(Path(out_dir) / part.base)
    config.inference_mode = True
    config.revision = None
    folder = Path(out_dir) / part.folder
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder), auto_mapping_dict={"base_model_class": part.hf_class.__name__,
                                                          "parent_library": part.hf_class.__module__})
    save_file(relative, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "README.md").write_text(_readme(part, out_dir, config, len(layers), note))
    logger.info("adapter %s: %d LoRA layers of %s (%s), base %s", folder, len(layers), part.hf_class.__name__,
                part.path or "<root>", config.base_model_name_or_path)
    return folder, {prefix + n for n in layers + saved}


def write_adapters(model: nn.Module, parts: Sequence[PeftPart], out_dir: Path) -> Dict[str, Path]:
    """Every part's adapter (``{folder: path}``); LoRA outside all parts goes to
    ``adapter_vlft/`` (vlft's names), and a model without parts gets that as ``adapter/``."""
    out: Dict[str, Path] = {}
    covered: Set[Tuple[int, str]] = set()
    for part in parts:
        written = save_part(model, part, out_dir)
        if written:
            folder, names = written
            out[part.folder] = folder
            holder = _holder_for(model, part)[0]
            covered |= {(id(holder), n) for n in names}
    left = []
    for path, holder in _peft_holders(model):
        layers, saved, _ = _lora_modules(holder, "")
        left += [f"{path}.{n}" if path else n for n in layers + saved if (id(holder), n) not in covered]
    if left:
        folder = "adapter" if not parts else "adapter_vlft"
        if parts:
            logger.warning("%d LoRA layers are in no transformers model (e.g. %s): %s/ holds all LoRA in vlft's "
                           "names (PeftModel.from_pretrained(<the vlft model>, ...))", len(left), left[0], folder)
        out[folder] = _save_vlft(model, Path(out_dir) / folder)
    return out


def _save_vlft(model: nn.Module, folder: Path) -> Path:
    """All LoRA in vlft's own names (loads onto the vlft model built from the same config)."""
    holders = _peft_holders(model)
    if holders[0][0] == "":
        model.save_pretrained(str(folder))
        owner = type(model.get_base_model()).__name__
    else:  # wrappers inside the model: one sub-folder each, named by its path
        for path, holder in holders:
            holder.save_pretrained(str(folder / path))
        owner = type(model).__name__
    (folder / "README.md").write_text(
        f"# LoRA adapter in vlft's names (`{owner}`)\n\nKeys carry vlft's attribute paths: load it onto the vlft "
        f"model built from the run's config.yaml (`vlft.models` registry), not onto a transformers class:\n\n"
        "```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(vlft_model, "
        f"{str(folder)!r})\n```\n")
    return folder


def without_lora(model: nn.Module) -> nn.Module:
    """A copy of the vlft model with every LoRA wrapper removed unmerged: the base."""
    holders = _peft_holders(model)
    if holders and holders[0][0] == "":
        return copy.deepcopy(model).unload()
    base = copy.deepcopy(model)
    for path, _ in _peft_holders(base):
        parent, _, name = path.rpartition(".")
        setattr(base.get_submodule(parent) if parent else base, name, base.get_submodule(path).unload())
    return base
