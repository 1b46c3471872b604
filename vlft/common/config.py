"""Layered, validated run configuration with LAVIS's schema.

Layers, lowest first::

    library defaults (run_schema.RUN_FIELDS + the task's RUN_OPTIONS)
    < model default YAML   (model class .PRETRAINED_MODEL_CONFIG_DICT[model_type])
    < dataset default YAML (builder class .DATASET_CONFIG_DICT["default"])
    < project YAML
    < --options key=value ...

Everything is checked before a model or dataset is built (``vlft.common.validate_run``,
``validate_model``, ``validate_datasets``): unknown keys in any section, unknown
registry names, wrong value types and out-of-range values raise ``ConfigError`` with
the key, the file layer it came from and the nearest valid names.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlft.common.registry import registry
from vlft.common.run_schema import Field, run_defaults
from vlft.common.validate_common import ConfigError, Layers, did_you_mean as _did_you_mean
from vlft.common.validate_datasets import validate_datasets
from vlft.common.validate_model import validate_model
from vlft.common.validate_run import registered as _registered, validate_run

__all__ = ["Config", "ConfigError", "build_config", "parse_options", "model_defaults", "dataset_defaults", "validate"]

TOP_LEVEL_KEYS = ("model", "datasets", "run", "imports")
#: keys that hold credentials; token-like model keys (pad_token, image_token, max_tokens,
#: num_query_token, bos_token_id, tokenizer) are not among them
_SECRET_KEY = re.compile(
    r"^(token|credentials?|passwd|password|secret)$"
    r"|(api|auth|access|bearer|refresh|session|hf|github|gitlab|wandb|openai)_?token$"
    r"|(api_?key|passwd|password|_secret|secret_?key|secret_access_key|private_?key|credentials)$",
    re.I,
)


def _load_yaml(path: os.PathLike, what: str) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: show the file and the parser's words
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    if not cfg:
        raise ConfigError(f"{what} {path} is empty")
    return cfg


def parse_options(options: Optional[Sequence[str]]) -> DictConfig:
    """``["run.init_lr=1e-5", "model.model_type=tiny"]`` -> a config layer."""
    options = list(options or [])
    for opt in options:
        if "=" not in opt:
            raise ConfigError(f"--options expects key=value pairs, got '{opt}'")
    layer = OmegaConf.create({})
    for opt in options:  # one at a time, so that an error names its option
        try:
            layer = OmegaConf.merge(layer, OmegaConf.from_dotlist([opt]))
        except Exception as err:  # OmegaConf's errors and yaml's (a malformed inline {dict} or [list])
            detail = " ".join(str(err).split())
            raise ConfigError(f"--options {opt!r}: cannot parse the value ({detail}); inline mappings "
                              "and lists are YAML: key={a: 1, b: 2}, key=[x, y]") from None
    return layer


class Config:
    """The merged configuration of one run.

    ``Config(args)`` takes an argparse namespace with ``cfg_path`` and ``options``
    (as LAVIS's does); ``Config.from_file(path, options)`` is the same without argparse.
    """

    def __init__(self, args=None, *, cfg_path: Optional[str] = None, options: Optional[Sequence[str]] = None):
        from vlft.common.plugins import import_user_modules  # late: plugins import the package

        cfg_path = cfg_path or getattr(args, "cfg_path", None)
        options = options if options is not None else getattr(args, "options", None)
        if not cfg_path:
            raise ConfigError("no config given: pass --cfg-path path/to/project.yaml")
        project, extra = _load_yaml(cfg_path, "config file"), parse_options(options)
        user = OmegaConf.merge(project, extra)
        self.cfg_path = str(cfg_path)
        import_user_modules(list(user.get("imports") or []), base_dir=Path(cfg_path).resolve().parent)
        layers = Layers()
        layers.add(str(cfg_path), project)
        layers.add("--options", extra)
        self.config = build_config(user, layers=layers, source=str(cfg_path))

    @classmethod
    def from_file(cls, cfg_path: str, options: Optional[Sequence[str]] = None) -> "Config":
        return cls(cfg_path=cfg_path, options=options)

    # LAVIS's accessors
    @property
    def run_cfg(self) -> DictConfig:
        return self.config.run

    @property
    def model_cfg(self) -> DictConfig:
        return self.config.model

    @property
    def datasets_cfg(self) -> DictConfig:
        return self.config.datasets

    def to_dict(self) -> Dict[str, Any]:
        return OmegaConf.to_container(self.config, resolve=True)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.config, resolve=True)

    def save(self, path: os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_yaml())

    def pretty_print(self) -> str:
        return self.to_yaml()


def build_config(user: DictConfig, layers: Optional[Layers] = None, source: str = "the config") -> DictConfig:
    """Merge the layers under ``user`` (project YAML + options) and validate the result.
    ``layers`` holds the user's layers (for error messages; the default layers join it);
    ``source`` names the project file."""
    layers = layers or Layers()
    unknown = [k for k in user if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(
            f"unknown top-level key '{unknown[0]}'{_did_you_mean(unknown[0], TOP_LEVEL_KEYS)}"
            f" (set in {layers.origin(str(unknown[0])) or source}). Valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}"
        )
    _reject_secrets(user, layers=layers)
    _lavis_model_options(user)
    run = user.get("run")
    if run is None or not run.get("task"):
        raise ConfigError(f"{source}: run.task is required; registered tasks: {', '.join(registry.list_tasks())}")
    task_cls = _registered(registry.tasks, run.task, "run.task", layers)

    defaults: List[Any] = [{"run": {**run_defaults(), **task_run_defaults(task_cls)}}]
    if user.get("model") is not None:
        defaults.append({"model": model_defaults(user.model, layers)})
    for name, ds_cfg in (user.get("datasets") or {}).items():
        defaults.append({"datasets": {name: dataset_defaults(name, ds_cfg, layers)}})
    merged = OmegaConf.merge(*defaults, user)
    try:
        resolved = OmegaConf.create(OmegaConf.to_container(merged, resolve=True))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve config interpolation: {err}") from None
    resolved.setdefault("datasets", {})
    validate(resolved, task_cls, layers)
    return resolved


def validate(cfg: DictConfig, task_cls: type, layers: Optional[Layers] = None) -> None:
    """Check every section of the merged config (see the module docstring)."""
    validate_run(cfg, task_cls, layers)
    if cfg.get("model") is not None:
        validate_model(cfg, _registered(registry.models, cfg.model.get("arch"), "model.arch"), layers)
    validate_datasets(cfg, layers)


def _lavis_model_options(user: DictConfig) -> None:
    """LAVIS keeps VQA answer lemmatisation on the model (``model.apply_lemmatizer``);
    vlft's VQA task owns it (``run.lemmatize``): the LAVIS key moves there."""
    model = user.get("model")
    if model is None or "apply_lemmatizer" not in model:
        return
    value = model.pop("apply_lemmatizer")
    if user.get("run") is not None and "lemmatize" not in user.run:
        user.run.lemmatize = value


def task_run_defaults(task_cls: type) -> Dict[str, Any]:
    options = getattr(task_cls, "RUN_OPTIONS", {}) or {}
    return {k: (v.default if isinstance(v, Field) else v) for k, v in options.items()}


def model_defaults(model_user: DictConfig, layers: Optional[Layers] = None) -> DictConfig:
    """The ``model:`` section of the model's default YAML for its model_type (added to
    ``layers``, under the YAML's path, when given)."""
    layers = layers or Layers()
    if not model_user.get("arch"):
        raise ConfigError(f"model.arch is required; registered models: {', '.join(registry.list_models())}")
    model_cls = _registered(registry.models, model_user.arch, "model.arch", layers)
    types = getattr(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", {}) or {}
    model_type = model_user.get("model_type") or getattr(model_cls, "DEFAULT_MODEL_TYPE", None)
    if model_type is None:
        return OmegaConf.create({})
    if model_type not in types:
        raise ConfigError(
            f"model.model_type: '{model_type}' is not a type of {model_user.arch}{_did_you_mean(model_type, types)}"
            f"{layers.note('model.model_type')}. Available: {', '.join(types) or '(none)'}"
        )
    from vlft.common.utils import resolve_config_file

    path = resolve_config_file(types[model_type])
    default = _load_yaml(path, f"default config of {model_user.arch}/{model_type}")
    section = default.get("model", OmegaConf.create({}))
    section.model_type = model_type
    layers.add_default(f"model default {_short(path)}", {"model": section})
    return section


def dataset_defaults(name: str, ds_user: Optional[DictConfig], layers: Optional[Layers] = None) -> DictConfig:
    """The builder's default YAML section for dataset ``name`` (its ``type``, default "default")."""
    layers = layers or Layers()
    builder_cls = _registered(registry.builders, name, f"datasets.{name}", layers)
    paths = getattr(builder_cls, "DATASET_CONFIG_DICT", {}) or {}
    ds_type = (ds_user or {}).get("type", "default")
    if not paths:
        return OmegaConf.create({})
    if ds_type not in paths:
        raise ConfigError(f"datasets.{name}.type: '{ds_type}' unknown{_did_you_mean(ds_type, paths)} Available: {', '.join(paths)}")
    from vlft.common.utils import resolve_config_file

    path = resolve_config_file(paths[ds_type])
    default = _load_yaml(path, f"default config of dataset {name}")
    sections = default.get("datasets") or {}
    if name not in sections and len(sections) == 1:  # a subclass reusing its parent's YAML
        section = next(iter(sections.values()))
    else:
        section = sections.get(name, OmegaConf.create({}))
    # a processor the project names differently replaces the default one: its keys
    # (e.g. the default's hflip) must not leak into another processor's config
    for proc_key in ("vis_processor", "text_processor"):
        for split, proc in ((ds_user or {}).get(proc_key) or {}).items():
            default_proc = (section.get(proc_key) or {}).get(split)
            if proc is not None and default_proc is not None and proc.get("name") not in (None, default_proc.get("name")):
                del section[proc_key][split]
    layers.add_default(f"dataset default {_short(path)}", {"datasets": {name: section}})
    return section


def _short(path: os.PathLike) -> str:
    """``configs/...`` for a shipped default YAML, else the path as given."""
    parts = Path(path).parts
    return str(Path(*parts[parts.index("configs"):])) if "configs" in parts else str(path)


def _reject_secrets(cfg: Any, prefix: str = "", layers: Optional[Layers] = None) -> None:
    layers = layers or Layers()
    if isinstance(cfg, DictConfig):
        for key, value in cfg.items():
            where = f"{prefix}{key}"
            if _SECRET_KEY.search(str(key)) and value not in (None, ""):
                raise ConfigError(
                    f"{where}{layers.note(where)}: credentials do not belong in a config (it is saved with every "
                    "checkpoint); set them in the environment instead (e.g. HF_TOKEN, WANDB_API_KEY)"
                )
            _reject_secrets(value, where + ".", layers)
