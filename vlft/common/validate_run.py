"""Validation of the ``run:`` section: known keys (``run_schema.RUN_FIELDS`` + the task's
``RUN_OPTIONS``), value types, lower bounds (``Field.minimum``; the schedule lengths only
where the chosen runner uses them), registry names, and ``run.deepspeed_config``
against DeepSpeed's own config parser (its pydantic models for the sections that have
one, e.g. ``zero_optimization``)."""
from __future__ import annotations

import importlib
import math
import sys
from typing import Any, Dict, Optional, Set

from omegaconf import DictConfig, ListConfig

from vlft.common.registry import registry
from vlft.common.run_schema import RUN_FIELDS, Field
from vlft.common.validate_common import ConfigError, Layers, did_you_mean, plain

DEEPSPEED_RUNNERS = ("runner_deepspeed", "deepspeed_runner")
DEEPSPEED_MISSING = "needs DeepSpeed: pip install 'vlft[deepspeed]'"


def registered(kind_registry, name: Any, where: str, layers: Optional[Layers] = None) -> type:
    """The class registered as ``name``; else a ConfigError naming the key ``where``."""
    try:
        return kind_registry.get(name)
    except KeyError as err:
        raise ConfigError(f"{where}: {err.args[0]}{layers.note(where) if layers else ''}") from None


def run_fields(task_cls: type) -> Dict[str, Field]:
    """Every valid ``run`` key with its Field (a task option given as a bare default
    becomes a Field of the default's type)."""
    fields = dict(RUN_FIELDS)
    for key, opt in (getattr(task_cls, "RUN_OPTIONS", {}) or {}).items():
        fields[key] = opt if isinstance(opt, Field) else Field(opt, types_of(opt), "task option")
    return fields


def validate_run(cfg: DictConfig, task_cls: type, layers: Optional[Layers] = None) -> None:
    """Check run keys, their types and ranges, and every registry name the run section names."""
    layers = layers or Layers()
    fields = run_fields(task_cls)
    run = cfg.run
    for key, value in list(run.items()):
        where, note = f"run.{key}", layers.note(f"run.{key}")
        if key not in fields:
            raise ConfigError(f"unknown key {where}{did_you_mean(key, fields)}{note} (see vlft/common/run_schema.py)")
        types = fields[key].types
        if types is not None and not is_instance(value, types):
            number = as_number(where, value, types)
            if number is None:
                want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise ConfigError(f"{where} must be {want}, got {value!r} ({type(value).__name__}){note}")
            run[key] = value = number
        low = fields[key].minimum
        if low is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
            raise ConfigError(f"{where} must be >= {low}, got {value}{note}")

    registered(registry.runners, run.runner, "run.runner", layers)
    registered(registry.lr_schedulers, run.lr_sched, "run.lr_sched", layers)
    if run.amp not in (True, False, "bf16", "fp16", "false", "none"):
        raise ConfigError(f"run.amp must be false, bf16 or fp16, got {run.amp!r}{layers.note('run.amp')}")
    unknown_backends = [b for b in run.log_backends if b not in ("tensorboard", "wandb")]
    if unknown_backends:
        raise ConfigError(f"run.log_backends: unknown backend {unknown_backends[0]!r}; valid: tensorboard, "
                          f"wandb{layers.note('run.log_backends')}")
    if not run.evaluate:
        if run.runner == "runner_iter":
            for key in ("max_iters", "iters_per_inner_epoch"):
                if not run.get(key):
                    raise ConfigError(f"runner_iter needs run.{key} (a positive number of optimizer steps)")
        elif run.max_epoch < 1:  # 0 epochs would "train" nothing and exit 0
            raise ConfigError(f"run.max_epoch must be >= 1 to train, got {run.max_epoch}"
                              f"{layers.note('run.max_epoch')}; set run.evaluate: true to only evaluate")
    if run.get("deepspeed_config") is not None or run.runner in DEEPSPEED_RUNNERS:
        validate_deepspeed(run, layers)


# --------------------------------------------------------------------------- DeepSpeed
def _import_deepspeed_config():
    from vlft.common.dist import quiet_deepspeed_accelerator

    quiet_deepspeed_accelerator()
    try:
        return importlib.import_module("deepspeed.runtime.config").DeepSpeedConfig
    except ImportError:
        return None


def validate_deepspeed(run: DictConfig, layers: Layers) -> None:
    """``run.deepspeed_config`` parsed by DeepSpeed itself (with the batch keys the
    strategy derives from the run section), and no top-level key DeepSpeed does not know."""
    key = "run.deepspeed_config" if run.get("deepspeed_config") is not None else "run.runner"
    parser = _import_deepspeed_config()
    if parser is None:
        raise ConfigError(f"{key} {DEEPSPEED_MISSING}{layers.note(key)}")
    user = plain(run.get("deepspeed_config")) or {}
    if not isinstance(user, dict):
        raise ConfigError(f"{key} must be a mapping of DeepSpeed config sections{layers.note(key)}")
    known = deepspeed_top_level_keys()
    for name in user:
        if name not in known:
            raise ConfigError(f"unknown key run.deepspeed_config.{name} (not a DeepSpeed config section)"
                              f"{did_you_mean(name, known)}{layers.note(f'run.deepspeed_config.{name}')}")
    ds = {k: v for k, v in user.items() if k != "train_batch_size"}  # the world size is not known yet
    ds.setdefault("train_micro_batch_size_per_gpu", run.batch_size_train)
    ds.setdefault("gradient_accumulation_steps", run.accum_grad_iters)
    try:
        parser(ds)
    except Exception as err:  # pydantic's ValidationError and DeepSpeed's own asserts
        raise ConfigError(f"run.deepspeed_config is not a valid DeepSpeed config{layers.note(key)}: "
                          f"{_first_lines(err)}") from None


_TOP_LEVEL: Set[str] = set()


def deepspeed_top_level_keys() -> Set[str]:
    """The section names DeepSpeed's config parser reads: the keys it looks up while
    parsing a config, and the key constants of its config modules."""
    if _TOP_LEVEL:
        return _TOP_LEVEL
    parser = _import_deepspeed_config()
    seen: Set[str] = set()

    class Recording(dict):
        def get(self, k, default=None):
            seen.add(k)
            return super().get(k, default)

        def __getitem__(self, k):
            seen.add(k)
            return super().__getitem__(k)

        def __contains__(self, k):
            seen.add(k)
            return super().__contains__(k)

    try:
        parser(Recording(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1))
    except Exception:  # pragma: no cover - the constants below still name the sections
        pass
    for name, module in list(sys.modules.items()):
        if name.startswith("deepspeed") and ("constants" in name or name.endswith("config")):
            for attr, value in vars(module).items():
                if attr.isupper() and isinstance(value, str) and value.isidentifier() and value.islower():
                    seen.add(value)
    _TOP_LEVEL.update(k for k in seen if isinstance(k, str))
    return _TOP_LEVEL


def _first_lines(err: Exception, n: int = 6) -> str:
    text = str(err).strip().splitlines()
    return " ".join(line.strip() for line in text[:n] if "errors.pydantic.dev" not in line)


# --------------------------------------------------------------------------- types
def types_of(default: Any) -> Optional[tuple]:
    if default is None:
        return None
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, (int, float)):
        return (int, float)
    return (type(default),) if not isinstance(default, (list, tuple)) else (list,)


def as_number(where: str, value: Any, types: tuple) -> Optional[Any]:
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


def is_instance(value: Any, types: tuple) -> bool:
    # bool is an int in Python; a config that says `max_epoch: true` is still wrong
    if isinstance(value, bool) and bool not in types:
        return False
    if isinstance(value, ListConfig):
        return list in types
    if isinstance(value, DictConfig):
        return dict in types
    return isinstance(value, types)
