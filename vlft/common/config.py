"""Layered, validated run configuration with LAVIS's schema.

Layers, lowest first::

    library defaults (run_schema.RUN_FIELDS + the task's RUN_OPTIONS)
    < model default YAML   (model class .PRETRAINED_MODEL_CONFIG_DICT[model_type])
    < dataset default YAML (builder class .DATASET_CONFIG_DICT["default"])
    < project YAML
    < --options key=value ...

Everything is checked before a model or dataset is built: unknown top-level or
``run`` keys, unknown registry names and wrong value types raise ``ConfigError``
with the key and the nearest valid names.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlft.common.registry import nearest, registry
from vlft.common.run_schema import RUN_FIELDS, Field, run_defaults

TOP_LEVEL_KEYS = ("model", "datasets", "run", "imports")
_SECRET_KEY = re.compile(r"(api_?key|access_token|auth_token|hf_token|password|secret)$", re.I)


class ConfigError(ValueError):
    """A user-fixable problem in a config: the message says which key and what is valid."""


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    hint = nearest(name, list(candidates))
    return f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""


def _registered(kind_registry, name: Any, where: str) -> type:
    try:
        return kind_registry.get(name)
    except KeyError as err:
        raise ConfigError(f"{where}: {err.args[0]}") from None


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
    return cfg


def parse_options(options: Optional[Sequence[str]]) -> DictConfig:
    """``["run.init_lr=1e-5", "model.model_type=tiny"]`` -> a config layer."""
    options = list(options or [])
    for opt in options:
        if "=" not in opt:
            raise ConfigError(f"--options expects key=value pairs, got '{opt}'")
    try:
        return OmegaConf.from_dotlist(options)
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad --options: {err}") from None


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
        user = OmegaConf.merge(_load_yaml(cfg_path, "config file"), parse_options(options))
        self.cfg_path = str(cfg_path)
        import_user_modules(list(user.get("imports") or []), base_dir=Path(cfg_path).resolve().parent)
        self.config = build_config(user)

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


def build_config(user: DictConfig) -> DictConfig:
    """Merge the layers under ``user`` (project YAML + options) and validate the result."""
    unknown = [k for k in user if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(
            f"unknown top-level key '{unknown[0]}'{_did_you_mean(unknown[0], TOP_LEVEL_KEYS)}"
            f" Valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}"
        )
    _reject_secrets(user)
    run = user.get("run")
    if run is None or not run.get("task"):
        raise ConfigError(f"run.task is required; registered tasks: {', '.join(registry.list_tasks())}")
    task_cls = _registered(registry.tasks, run.task, "run.task")

    layers: List[Any] = [{"run": {**run_defaults(), **task_run_defaults(task_cls)}}]
    if user.get("model") is not None:
        layers.append({"model": model_defaults(user.model)})
    for name, ds_cfg in (user.get("datasets") or {}).items():
        layers.append({"datasets": {name: dataset_defaults(name, ds_cfg)}})
    merged = OmegaConf.merge(*layers, user)
    try:
        resolved = OmegaConf.create(OmegaConf.to_container(merged, resolve=True))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve config interpolation: {err}") from None
    resolved.setdefault("datasets", {})
    validate(resolved, task_cls)
    return resolved


def task_run_defaults(task_cls: type) -> Dict[str, Any]:
    options = getattr(task_cls, "RUN_OPTIONS", {}) or {}
    return {k: (v.default if isinstance(v, Field) else v) for k, v in options.items()}


def model_defaults(model_user: DictConfig) -> DictConfig:
    """The ``model:`` section of the model's default YAML for its model_type."""
    if not model_user.get("arch"):
        raise ConfigError(f"model.arch is required; registered models: {', '.join(registry.list_models())}")
    model_cls = _registered(registry.models, model_user.arch, "model.arch")
    types = getattr(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", {}) or {}
    model_type = model_user.get("model_type") or getattr(model_cls, "DEFAULT_MODEL_TYPE", None)
    if model_type is None:
        return OmegaConf.create({})
    if model_type not in types:
        raise ConfigError(
            f"model.model_type: '{model_type}' is not a type of {model_user.arch}"
            f"{_did_you_mean(model_type, types)} Available: {', '.join(types) or '(none)'}"
        )
    from vlft.common.utils import resolve_config_file

    default = _load_yaml(resolve_config_file(types[model_type]), f"default config of {model_user.arch}/{model_type}")
    section = default.get("model", OmegaConf.create({}))
    section.model_type = model_type
    return section


def dataset_defaults(name: str, ds_user: Optional[DictConfig]) -> DictConfig:
    """The builder's default YAML section for dataset ``name`` (its ``type``, default "default")."""
    builder_cls = _registered(registry.builders, name, f"datasets.{name}")
    paths = getattr(builder_cls, "DATASET_CONFIG_DICT", {}) or {}
    ds_type = (ds_user or {}).get("type", "default")
    if not paths:
        return OmegaConf.create({})
    if ds_type not in paths:
        raise ConfigError(f"datasets.{name}.type: '{ds_type}' unknown{_did_you_mean(ds_type, paths)} Available: {', '.join(paths)}")
    from vlft.common.utils import resolve_config_file

    default = _load_yaml(resolve_config_file(paths[ds_type]), f"default config of dataset {name}")
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
    return section


def validate(cfg: DictConfig, task_cls: type) -> None:
    """Check run keys and their types, and every registry name the config mentions."""
    allowed: Dict[str, Optional[tuple]] = {k: f.types for k, f in RUN_FIELDS.items()}
    for key, opt in (getattr(task_cls, "RUN_OPTIONS", {}) or {}).items():
        allowed[key] = opt.types if isinstance(opt, Field) else _types_of(opt)
    for key, value in list(cfg.run.items()):
        if key not in allowed:
            raise ConfigError(f"unknown key run.{key}{_did_you_mean(key, allowed)} (see vlft/common/run_schema.py)")
        types = allowed[key]
        if types is not None and not _is_instance(value, types):
            number = _as_number(f"run.{key}", value, types)
            if number is not None:
                cfg.run[key] = number
                continue
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"run.{key} must be {want}, got {value!r} ({type(value).__name__})")

    _registered(registry.runners, cfg.run.runner, "run.runner")
    _registered(registry.lr_schedulers, cfg.run.lr_sched, "run.lr_sched")
    amp = cfg.run.amp
    if amp not in (True, False, "bf16", "fp16", "false", "none"):
        raise ConfigError(f"run.amp must be false, bf16 or fp16, got {amp!r}")
    unknown_backends = [b for b in cfg.run.log_backends if b not in ("tensorboard", "wandb")]
    if unknown_backends:
        raise ConfigError(f"run.log_backends: unknown backend {unknown_backends[0]!r}; valid: tensorboard, wandb")
    if cfg.run.runner == "runner_iter" and not cfg.run.evaluate:
        for key in ("max_iters", "iters_per_inner_epoch"):
            if not cfg.run.get(key):
                raise ConfigError(f"runner_iter needs run.{key} (a positive number of optimizer steps)")
    for key in ("accum_grad_iters", "val_freq"):
        if cfg.run[key] < 1:
            raise ConfigError(f"run.{key} must be >= 1, got {cfg.run[key]}")

    for name, ds_cfg in cfg.datasets.items():
        for proc_key in ("vis_processor", "text_processor"):
            for split, proc in ((ds_cfg or {}).get(proc_key) or {}).items():
                if proc is not None and proc.get("name") is not None:
                    _registered(registry.processors, proc.name, f"datasets.{name}.{proc_key}.{split}.name")


def _types_of(default: Any) -> Optional[tuple]:
    if default is None:
        return None
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, (int, float)):
        return (int, float)
    return (type(default),) if not isinstance(default, (list, tuple)) else (list,)


def _as_number(where: str, value: Any, types: tuple) -> Optional[Any]:
    """``value`` as the number a numeric key wants (``"2e-6"``, ``"2e4"``, ``2e4`` for an int
    key), None when the key is not numeric or the value is not a number at all; a
    non-integral value for an integer key is a ConfigError."""
    if int not in types or isinstance(value, bool):
        return None
    number: Any = value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
        if isinstance(number, float) and not math.isfinite(number):
            return None
    if isinstance(number, float) and float not in types:
        if not number.is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        number = int(number)
    return number if isinstance(number, types) else None


def _is_instance(value: Any, types: tuple) -> bool:
    # bool is an int in Python; a config that says `max_epoch: true` is still wrong
    if isinstance(value, bool) and bool not in types:
        return False
    from omegaconf import ListConfig

    if isinstance(value, ListConfig):
        return list in types
    if isinstance(value, DictConfig):
        return dict in types
    return isinstance(value, types)


def _reject_secrets(cfg: Any, prefix: str = "") -> None:
    if isinstance(cfg, DictConfig):
        for key, value in cfg.items():
            where = f"{prefix}{key}"
            if _SECRET_KEY.search(str(key)) and value not in (None, ""):
                raise ConfigError(
                    f"{where}: credentials do not belong in a config (it is saved with every "
                    "checkpoint); set them in the environment instead (e.g. HF_TOKEN, WANDB_API_KEY)"
                )
            _reject_secrets(value, where + ".")
