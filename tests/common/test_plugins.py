"""User code outside vlft registers builders, models and tasks that a YAML then uses."""
import sys
import textwrap

import pytest

from tests.helpers import PLUGINS, REPO, only_run_dir, read_log, run_script
from vlft.common.config import Config, ConfigError

PLUGIN = '''
import torch
from torch.utils.data import Dataset
from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from vlft.models.base_model import BaseModel

class Ones(Dataset):
    def __init__(self, vis_processor, text_processor, split, info, build_info, run_cfg=None):
        self.n = info["num_samples"]
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return {"x": torch.ones(3), "instance_id": i}

@registry.register_builder("my_ones")
class OnesBuilder(BaseDatasetBuilder):
    train_dataset_cls = eval_dataset_cls = Ones

@registry.register_model("my_scale")
class Scale(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
    @classmethod
    def from_config(cls, cfg):
        return cls()
    def forward(self, samples):
        return {"loss": ((samples["x"] * self.w).sum(-1) - 2.0).pow(2).mean()}
'''

PROJECT = f'''
imports: [{{plugin}}, {PLUGINS / "toy_plugin.py"}]
model: {{{{arch: my_scale}}}}
datasets:
  my_ones:
    build_info: {{{{annotations: {{{{train: {{{{num_samples: 16}}}}}}}}}}}}
run:
  task: toy_regression
  init_lr: 0.1
  max_epoch: 5
  log_freq: 1
  batch_size_train: 4
  device: cpu
  valid_splits: []
  output_dir: {{out}}
'''


def test_plugin_file_registers_a_builder_and_a_model_used_by_the_yaml(tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    cfg_path = tmp_path / "project.yaml"
    cfg_path.write_text(PROJECT.format(plugin="my_plugin.py", out=tmp_path / "out"))  # relative to the YAML
    run_script(["train.py", "--cfg-path", str(cfg_path)])
    losses = [r["loss"] for r in read_log(only_run_dir(tmp_path / "out")) if r["kind"] == "train"]
    assert losses[-1] < losses[0] / 10  # w learned to sum to 2


def test_plugin_by_module_name_from_the_environment(tmp_path):
    (tmp_path / "my_env_plugin.py").write_text(PLUGIN)
    cfg_path = tmp_path / "project.yaml"
    cfg_path.write_text(PROJECT.replace("imports: [{plugin}, ", "imports: [").format(out=tmp_path / "out"))
    env = {"VLFT_PLUGINS": "my_env_plugin", "PYTHONPATH": f"{tmp_path}:{REPO}"}
    run_script(["train.py", "--cfg-path", str(cfg_path), "--options", "run.max_epoch=1"], env=env)


def test_entry_point_plugins_are_loaded(tmp_path):
    (tmp_path / "ep_plugin.py").write_text(PLUGIN)
    dist_info = tmp_path / "ep_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[vlft.plugins]\nmine = ep_plugin\n")
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        import vlft
        from vlft.common.plugins import import_user_modules
        import_user_modules([])
        assert vlft.registry.get_builder_class("my_ones").__module__ == "ep_plugin"
        print("ok")
    """)
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_missing_plugin_is_a_config_error(tmp_path):
    cfg_path = tmp_path / "project.yaml"
    cfg_path.write_text(PROJECT.format(plugin="nowhere.py", out=tmp_path / "out"))
    with pytest.raises(ConfigError, match="plugin file 'nowhere.py' not found"):
        Config.from_file(str(cfg_path))
    cfg_path.write_text(PROJECT.format(plugin="no_such_module_xyz", out=tmp_path / "out"))
    with pytest.raises(ConfigError, match="cannot import plugin module 'no_such_module_xyz'"):
        Config.from_file(str(cfg_path))
