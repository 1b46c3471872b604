"""Fine-tuning methods from the ``model:`` section, for any registered model.

- ``freeze: [pattern, ...]`` freezes the matching parameters (patterns as in
  ``run.lr_multipliers``: a module path anywhere in the name, globs allowed);
- ``unfreeze: [{epoch: k, modules: [pattern, ...]}, ...]`` unfreezes them again at
  the start of (0-based) epoch k; ``{epoch: k, last_n: N, layers: vision_model.encoder.layers}``
  names the last N blocks of a layer list (the usual "last N vision layers" recipe);
- ``peft: {method: lora, r, alpha, dropout, target_modules, modules_to_save}`` wraps the
  model with peft (LoRA). A target that matches no module fails with the candidates.
  ``export`` writes the adapters in the terms of the transformers models inside
  (``vlft.models.peft_export``), so plain peft loads them.

Learning-rate multipliers per module live in ``run.lr_multipliers`` (optimizer side).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

from torch import nn

from vlft.runners.optim import matches

logger = logging.getLogger(__name__)


def matching_params(model: nn.Module, patterns: Iterable[str], what: str) -> List[str]:
    names = [n for n, _ in model.named_parameters()]
    chosen: List[str] = []
    for pattern in patterns:
        hit = [n for n in names if matches(n, pattern)]
        if not hit:
            raise ValueError(f"{what}: pattern '{pattern}' matches no parameter of {type(model).__name__} "
                             f"(parameters look like: {', '.join(names[:3])}, ...)")
        chosen.extend(hit)
    return chosen


def freeze(model: nn.Module, patterns: Sequence[str]) -> int:
    params = dict(model.named_parameters())
    names = matching_params(model, patterns, "model.freeze")
    for name in names:
        params[name].requires_grad_(False)
    logger.info("froze %d parameter tensors matching %s", len(set(names)), list(patterns))
    return len(set(names))


def _expand_unfreeze(model: nn.Module, entry: Mapping[str, Any]) -> List[str]:
    if "last_n" in entry:
        layers = entry.get("layers")
        container = dict(model.named_modules()).get(layers) if layers else None
        if container is None:  # allow a path relative to a wrapper (peft adds base_model.model.)
            container = next((m for n, m in model.named_modules() if layers and n.endswith("." + layers)), None)
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            raise ValueError(f"model.unfreeze: 'layers: {layers}' is not a layer list of {type(model).__name__}")
        n = len(container)
        prefix = next(name for name, m in model.named_modules() if m is container)
        return [f"{prefix}.{i}" for i in range(max(n - int(entry["last_n"]), 0), n)]
    return list(entry.get("modules") or [])


class UnfreezeSchedule:
    """Progressive unfreezing. The optimizer holds these parameters from the start (no
    state is created while they have no gradient), so unfreezing needs no new optimizer."""

    def __init__(self, model: nn.Module, entries: Sequence[Mapping[str, Any]]):
        self.model = model
        self.steps: List[tuple] = []
        for entry in entries or []:
            patterns = _expand_unfreeze(model, entry)
            names = matching_params(model, patterns, "model.unfreeze")
            self.steps.append((int(entry["epoch"]), sorted(set(names))))
        self.applied: Set[int] = set()

    def param_names(self) -> Set[str]:
        return {n for _, names in self.steps for n in names}

    def apply(self, epoch: int) -> List[str]:
        """Unfreeze everything scheduled at or before ``epoch``; return the newly trainable names."""
        params = dict(self.model.named_parameters())
        newly = []
        for i, (at, names) in enumerate(self.steps):
            if at <= epoch and i not in self.applied:
                self.applied.add(i)
                for name in names:
                    if not params[name].requires_grad:
                        params[name].requires_grad_(True)
                        newly.append(name)
        if newly:
            logger.info("epoch %d: unfroze %d parameter tensors", epoch, len(newly))
        return newly

    def __bool__(self) -> bool:
        return bool(self.steps)


def lora_candidates(model: nn.Module) -> List[str]:
    """Module names peft can target (last path component of Linear / Conv / Embedding layers)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, kinds) and name})


def apply_peft(model: nn.Module, cfg: Mapping[str, Any]) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    method = cfg.get("method", "lora")
    if method != "lora":
        raise ValueError(f"model.peft.method: '{method}' is not supported; use lora")
    targets = list(cfg.get("target_modules") or [])
    if not targets:
        raise ValueError(f"model.peft.target_modules is required; candidates: {', '.join(lora_candidates(model))}")
    resolve = getattr(model, "resolve_lora_targets", None)  # a model's own presets / regexes (e.g. Florence-2)
    if callable(resolve):
        targets = resolve(targets)  # one regex peft full-matches, already checked by the model
    module_names = [n for n, _ in model.named_modules()]
    for target in [] if isinstance(targets, str) else targets:
        if not any(n == target or n.endswith("." + target) for n in module_names):
            raise ValueError(f"model.peft.target_modules: '{target}' matches no module of {type(model).__name__}; "
                             f"candidates: {', '.join(lora_candidates(model))}")
    config = LoraConfig(r=int(cfg.get("r", 8)), lora_alpha=int(cfg.get("alpha", 16)), lora_dropout=float(cfg.get("dropout", 0.05)),
                        target_modules=targets, modules_to_save=list(cfg.get("modules_to_save") or []) or None,
                        bias=cfg.get("bias", "none"))
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA on %s: %d trainable of %d parameters (%.2f%%)", targets, trainable, total, 100 * trainable / total)
    return peft_model


def apply_finetuning(model: nn.Module, model_cfg: Mapping[str, Any]) -> nn.Module:
    """Attention kernels, freezing, then the peft wrapper, as the ``model:`` section asks."""
    set_attention(model, model_cfg.get("attn_implementation"))
    if model_cfg.get("freeze"):
        freeze(model, list(model_cfg.freeze))
    if model_cfg.get("unfreeze"):  # scheduled parameters start frozen
        for _, names in UnfreezeSchedule(model, model_cfg.unfreeze).steps:
            params = dict(model.named_parameters())
            for name in names:
                params[name].requires_grad_(False)
    if model_cfg.get("compile"):
        compile_modules(model, model_cfg.compile)
    if model_cfg.get("peft"):
        if model_cfg.get("unfreeze"):
            raise ValueError("model.unfreeze and model.peft together are not supported: LoRA trains adapters only")
        model = apply_peft(model, model_cfg.peft)
    return model


COMPILE_OPTIONS = ("modules", "backend", "mode", "dynamic", "fullgraph")


def compile_modules(model: nn.Module, spec: Any) -> List[str]:
    """``model.compile``: ``[blip.vision_model]`` or ``{modules: [...], backend: inductor,
    mode: max-autotune, dynamic: null, fullgraph: false}`` compiles those submodules in
    place with ``torch.compile`` (``nn.Module.compile``: parameter names, checkpoints and
    LoRA targets are unchanged). The first steps are slow while it compiles; worth it
    on a GPU for a large vision tower whose input shape is fixed."""
    from omegaconf import OmegaConf

    from vlft.common.validate_common import ConfigError, did_you_mean

    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec
    options = dict(spec) if isinstance(spec, Mapping) else {"modules": spec}
    unknown = [k for k in options if k not in COMPILE_OPTIONS]
    if unknown:
        raise ConfigError(f"unknown key model.compile.{unknown[0]}{did_you_mean(unknown[0], COMPILE_OPTIONS)}; "
                          f"valid: {', '.join(COMPILE_OPTIONS)}")
    names = options.pop("modules", None)
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError("model.compile needs the module names to compile, e.g. compile: [blip.vision_model]")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise ConfigError(f"model.compile: no module {name!r} in {type(model).__name__}"
                              f"{did_you_mean(name, [n for n in modules if n])}")
        modules[name].compile(**{k: v for k, v in options.items() if v is not None})
    logger.info("compiling %s with torch.compile (%s): the first steps include the compilation", names,
                ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults")
    return list(names)


def set_attention(model: nn.Module, implementation) -> None:
    """``model.attn_implementation``: ``sdpa`` runs BLIP's (v1) attention on
    ``scaled_dot_product_attention``, ``eager`` (the default) on transformers' own
    kernels (vlft/models/blip/sdpa.py). BLIP-2, Florence-2 and the chat LLMs already use
    transformers' SDPA; the key changes nothing there."""
    if implementation:
        from vlft.models.blip.sdpa import set_blip_attention

        changed = set_blip_attention(model, str(implementation))
        if changed:
            logger.info("attention: %s in %d BLIP attention module(s)", implementation, changed)


def base_model(model: nn.Module) -> nn.Module:
    """The model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def export(model: nn.Module, out_dir: Path) -> Dict[str, Path]:
    """What other tools load without vlft, in ``out_dir``:

    - ``adapter/`` (and e.g. BLIP-2's ``adapter_llm/``): the LoRA adapter of each transformers
      model inside the vlft model (``peft_parts``), in peft's format with that model's names,
      so ``PeftModel.from_pretrained(<transformers class>.from_pretrained(hf_base), adapter)``
      restores it (``vlft.models.peft_export``; each folder's README.md names its base);
    - ``hf_base/``: the base those adapters expect, the model before LoRA, in ``save_hf``'s format;
    - ``hf_model/``: the model with LoRA merged in HF format (loadable by ``transformers.pipeline``).
    """
    import copy

    from vlft.models.peft_export import has_lora, without_lora, write_adapters

    out_dir = Path(out_dir)
    out: Dict[str, Path] = {}
    vlft_model = base_model(model)
    if has_lora(model):
        parts = vlft_model.peft_parts() if callable(getattr(vlft_model, "peft_parts", None)) else []
        out.update(write_adapters(model, parts, out_dir))
        if hasattr(vlft_model, "save_hf") and any(name != "adapter_vlft" for name in out):
            base = without_lora(model)
            out["hf_base"] = Path(base.save_hf(str(out_dir / "hf_base")))
            del base
    # the merged model: an outer wrapper is merged here; one inside (get_lora) is the model's own save_hf's
    merged = copy.deepcopy(model).merge_and_unload() if hasattr(model, "peft_config") else model
    if hasattr(merged, "save_hf"):
        out["hf_model"] = Path(merged.save_hf(str(out_dir / "hf_model")))
    return out
