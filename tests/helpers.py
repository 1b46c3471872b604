"""Helpers shared by the tests: paths, subprocess launchers, run-folder readers, tiny models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub look-ups would hang ~45 s before failing
REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "tests" / "plugins"
TOY_RUN = PLUGINS / "toy_run.yaml"


def subprocess_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
    env.update(extra or {})
    return env


def run_script(args: List[str], nproc: int = 1, expect_ok: bool = True, timeout: int = 240, env=None) -> subprocess.CompletedProcess:
    """Run ``train.py``/``evaluate.py`` (args[0]) as a new process, or under torchrun with ``nproc`` ranks."""
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(env), capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_in_process(args: List[str]) -> None:
    """``train.py``/``evaluate.py`` (args[0]) with ``args[1:]``, in this process: what
    ``run_script`` does without a new interpreter (imports, METEOR's JVM) per run."""
    from vlft.launch import main_evaluate, main_train

    main = {"train.py": main_train, "evaluate.py": main_evaluate}[args[0]]
    assert main(args[1:]) == 0, f"{' '.join(args)} exited non-zero (see its error above)"


def read_log(run_dir: Path) -> List[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def only_run_dir(output_dir: Path) -> Path:
    dirs = [p for p in Path(output_dir).iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def final_weights(run_dir: Path) -> Dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)["model"]




def toy_plugin():
    """The toy plugin module, imported the way a YAML's ``imports:`` does (once per process)."""
    from vlft.common.plugins import import_user_modules

    return import_user_modules([str(PLUGINS / "toy_plugin.py")])[0]


def tiny_cfg(cls, model_type: str = "tiny", **overrides):
    """The ``model`` section of a model class's YAML for ``model_type``, with ``overrides``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(cls.default_config_path(model_type)).model
    cfg.merge_with(overrides)
    return cfg


def tiny_model(cls, seed: int = 0, **overrides):
    """``cls`` built from its tiny YAML after ``torch.manual_seed(seed)``, in eval mode."""
    torch.manual_seed(seed)
    return cls.from_config(tiny_cfg(cls, **overrides)).eval()


def sharpen(model, seed: int = 1, std: float = 0.3, only=None):
    """Redraw every weight matrix (or those whose name contains one of ``only``) with a
    larger std, in place, so that a tiny random model's outputs depend on its inputs (a
    freshly initialised BLIP writes the same caption for every image)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and (only is None or any(k in name for k in only)):
                param.copy_(torch.randn(param.shape, generator=g) * std)
    return model
