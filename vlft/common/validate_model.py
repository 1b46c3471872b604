"""Validation of the ``model:`` section against what the model class reads.

A model's valid keys are the generic ones the framework reads (``GENERIC_MODEL_KEYS``),
the keys of every default YAML of its ``PRETRAINED_MODEL_CONFIG_DICT`` (any model_type's:
a project may switch types) and what the classes of its MRO declare (``__init__`` takes
built parts, not config keys: ``from_config`` translates):

- ``CONFIG_KEYS``: keys ``from_config`` reads that no default YAML spells out;
- ``HF_SUB_CONFIGS``: nested transformers configs, ``{key: config class name}`` or
  ``{key: "auto:<default model_type>"}`` (the class is the dict's own ``model_type``'s);
  their keys are checked against the class's fields;
- ``POSITION_LIMITS``: ``{length key: sub-config key}``; the length (``max_txt_len``, or
  ``run.max_len`` for a decoder whose generated length counts the prompt) must fit the
  sub-config's ``max_position_embeddings``. Checked where the sub-config is known from
  the config: not for a model whose ``pretrained`` HF checkpoint brings its own config.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, FrozenSet, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from vlft.common.validate_common import ConfigError, Layers, declared as _declared, did_you_mean, plain

#: keys every model accepts: the LAVIS checkpoint switches and vlft.models.adapters' fine-tuning
GENERIC_MODEL_KEYS = frozenset({
    "arch", "model_type", "load_pretrained", "pretrained", "load_finetuned", "finetuned",
    "freeze", "unfreeze", "peft", "attn_implementation", "compile",
})
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
#: keys with a fixed set of values (``loss_logits``: vlft.models.lm_loss.LOSS_LOGITS)
CHOICES = {"attn_implementation": ATTN_IMPLEMENTATIONS, "loss_logits": ("labelled", "all")}
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


@functools.lru_cache(maxsize=None)
def model_keys(model_cls: type) -> FrozenSet[str]:
    """Every key the ``model:`` section of ``model_cls`` may hold."""
    from vlft.common.utils import resolve_config_file

    keys = set(GENERIC_MODEL_KEYS) | set(_declared(model_cls, "CONFIG_KEYS")) | set(_declared(model_cls, "HF_SUB_CONFIGS"))
    for path in (getattr(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", {}) or {}).values():
        try:
            keys.update((OmegaConf.load(resolve_config_file(path)).get("model") or {}).keys())
        except Exception:  # a missing default YAML is reported when the type is chosen
            continue
    return frozenset(str(k) for k in keys)


def _init_parameters(init) -> set:
    try:
        params = inspect.signature(init).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def hf_config_class(spec: str, section: Mapping[str, Any], where: str) -> type:
    """The transformers config class a sub-config ``spec`` names for ``section``."""
    import transformers

    if spec.startswith("auto:"):
        model_type = str(section.get("model_type") or spec.split(":", 1)[1])
        mapping = transformers.CONFIG_MAPPING
        if model_type not in mapping:
            raise ConfigError(f"{where}.model_type: unknown transformers model type {model_type!r}"
                              f"{did_you_mean(model_type, mapping.keys())}")
        return mapping[model_type]
    return getattr(transformers, spec)


@functools.lru_cache(maxsize=None)
def hf_config_fields(config_cls: type) -> FrozenSet[str]:
    """The fields of a transformers config class: its defaults, ``__init__`` parameters and aliases."""
    from transformers import GenerationConfig, PretrainedConfig

    fields = set(config_cls().to_dict()) | _init_parameters(config_cls.__init__)
    fields |= _init_parameters(PretrainedConfig.__init__) | set(getattr(config_cls, "attribute_map", {}) or {})
    # generation settings (decoder_start_token_id, forced_eos_token_id, ...) and special token
    # ids are still read from a model config when it sets them
    fields |= set(GenerationConfig().to_dict()) | {"bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
                                                   "tie_word_embeddings"}
    return frozenset(fields)


def validate_model(cfg: DictConfig, model_cls: type, layers: Optional[Layers] = None) -> None:
    """The ``model:`` section's keys, its nested transformers configs' keys, and the
    lengths that must fit the text model's positions (see the module docstring)."""
    layers = layers or Layers()
    model = cfg.model
    arch = model.get("arch")
    valid = model_keys(model_cls)
    for key in model:
        if key not in valid:
            raise ConfigError(f"unknown key model.{key} for model {arch}{did_you_mean(key, valid)}"
                              f"{layers.note(f'model.{key}')}. Valid keys: {', '.join(sorted(valid))}")
    for key, choices in CHOICES.items():
        value = model.get(key)
        if value is not None and value not in choices:
            raise ConfigError(f"model.{key} must be one of {', '.join(choices)}, got {value!r}"
                              f"{did_you_mean(str(value), choices)}{layers.note(f'model.{key}')}")
    sub_configs = _declared(model_cls, "HF_SUB_CONFIGS")
    for key, spec in sub_configs.items():
        section = plain(model.get(key))
        if not section:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"model.{key} must be a mapping of {spec} fields, got {section!r}"
                              f"{layers.note(f'model.{key}')}")
        config_cls = hf_config_class(spec, section, f"model.{key}")
        fields = hf_config_fields(config_cls)
        for field in section:
            if field not in fields:
                raise ConfigError(f"unknown key model.{key}.{field}: not a field of transformers' "
                                  f"{config_cls.__name__}{did_you_mean(field, fields)}"
                                  f"{layers.note(f'model.{key}.{field}')}")
    _check_positions(cfg, model_cls, sub_configs, layers)


def builds_from_hf_checkpoint(model: Mapping[str, Any]) -> bool:
    """Whether ``pretrained`` is a HF model (an id or a directory) that brings its own config."""
    pretrained = model.get("pretrained") if model.get("load_pretrained", False) else None
    return bool(pretrained) and not str(pretrained).endswith(_CHECKPOINT_SUFFIXES)


def _check_positions(cfg: DictConfig, model_cls: type, sub_configs: Dict[str, str], layers: Layers) -> None:
    limits = _declared(model_cls, "POSITION_LIMITS")
    model = cfg.model
    if not limits or builds_from_hf_checkpoint(model):
        return
    for length_key, sub_key in limits.items():
        section = plain(model.get(sub_key))
        if not isinstance(section, dict) or sub_key not in sub_configs:
            continue  # the sub-model comes from elsewhere (e.g. a named LLM): not knowable here
        positions = section.get("max_position_embeddings")
        if positions is None:
            default = hf_config_class(sub_configs[sub_key], section, f"model.{sub_key}")()
            positions = getattr(default, "max_position_embeddings", None)
        owner, _, name = length_key.rpartition(".")
        value = (cfg.get(owner or "model") or {}).get(name)
        if positions is None or not isinstance(value, int) or isinstance(value, bool) or value <= positions:
            continue
        full = length_key if owner else f"model.{length_key}"
        raise ConfigError(f"{full} = {value}{layers.note(full)} exceeds the text model's {positions} positions "
                          f"(model.{sub_key}.max_position_embeddings{_origin_of(layers, f'model.{sub_key}.max_position_embeddings')}); "
                          f"lower it or raise max_position_embeddings")


def _origin_of(layers: Layers, key: str) -> str:
    label = layers.origin(key)
    return f", from {label}" if label else ", the transformers default"
