import textwrap

import pytest

from vlft.common.config import Config, ConfigError
from vlft.common.utils import cache_root, resolve_data_path

from tests.helpers import TOY_RUN

LAVIS_STYLE = """
model:
  arch: toy_classifier
  model_type: tiny
  load_finetuned: False
  load_pretrained: False
  width: 12

datasets:
  synthetic_shapes: # name of the dataset builder
    vis_processor:
        train:
          name: "simple_image_train"
          image_size: 48
        eval:
          name: "simple_image_eval"
          image_size: 48
    build_info:
      annotations:
        train: {num_samples: 64}

run:
  task: classification
  # optimizer
  lr_sched: "linear_warmup_cosine_lr"
  init_lr: 1e-5
  min_lr: 0
  weight_decay: 0.05
  max_epoch: 5
  batch_size_train: 32
  batch_size_eval: 64
  num_workers: 4
  seed: 42
  output_dir: "output/BLIP/Caption_coco"
  amp: False
  resume_ckpt_path: null
  evaluate: False
  train_splits: ["train"]
  valid_splits: ["val"]
  test_splits: ["test"]
  device: "cuda"
  world_size: 1
  dist_url: "env://"
  distributed: True
"""


def write(tmp_path, text, name="project.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_lavis_style_project_loads_with_all_layers(tmp_path):
    cfg = Config.from_file(write(tmp_path, LAVIS_STYLE), options=["run.max_epoch=2", "model.dropout=0.3"])
    # library default (not in any YAML)
    assert cfg.run_cfg.beta2 == 0.999 and cfg.run_cfg.accum_grad_iters == 1
    # model default YAML, then project YAML, then --options
    assert cfg.model_cfg.num_classes == 9  # configs/models/toy_classifier/tiny.yaml
    assert cfg.model_cfg.width == 12  # project overrides the model default (8)
    assert cfg.model_cfg.dropout == 0.3  # --options overrides both
    # dataset default YAML under the project's values
    ds = cfg.datasets_cfg.synthetic_shapes
    assert ds.vis_processor.train.hflip == 0.0 and ds.vis_processor.train.image_size == 48
    assert ds.build_info.annotations.train.num_samples == 64
    assert ds.build_info.annotations.val.num_samples == 256  # kept from the dataset default
    assert cfg.run_cfg.max_epoch == 2 and cfg.run_cfg.init_lr == 1e-5


def test_options_can_change_model_type_before_defaults_load(tmp_path):
    cfg = Config.from_file(write(tmp_path, LAVIS_STYLE.replace("  width: 12\n", "")), options=["model.model_type=small"])
    assert cfg.model_cfg.width == 32


@pytest.mark.parametrize("edit,message", [
    (("init_lr: 1e-5", "init_lrr: 1e-5"), "unknown key run.init_lrr; did you mean 'init_lr'"),
    (("arch: toy_classifier", "arch: toy_clasifier"), "model.arch: unknown model 'toy_clasifier'; did you mean 'toy_classifier'"),
    (("model_type: tiny", "model_type: tinny"), "model.model_type: 'tinny' is not a type of toy_classifier; did you mean 'tiny'"),
    (("synthetic_shapes:", "synthetic_shape:"), "datasets.synthetic_shape: unknown dataset builder 'synthetic_shape'; did you mean 'synthetic_shapes'"),
    (('name: "simple_image_eval"', 'name: "simple_image_evl"'), "datasets.synthetic_shapes.vis_processor.eval.name: unknown processor"),
    (("task: classification", "task: clasification"), "run.task: unknown task 'clasification'; did you mean 'classification'"),
    (('lr_sched: "linear_warmup_cosine_lr"', 'lr_sched: "cosine"'), "run.lr_sched: unknown lr scheduler 'cosine'"),
    (("max_epoch: 5", "max_epoch: five"), "run.max_epoch must be int, got 'five'"),
    (("max_epoch: 5", "max_epoch: true"), "run.max_epoch must be int, got True"),
    (("amp: False", "amp: fp8"), "run.amp must be false, bf16 or fp16"),
    (("train_splits: [\"train\"]", "train_splits: train"), "run.train_splits must be list"),
])
def test_validation_errors_name_the_key_and_nearest(tmp_path, edit, message):
    old, new = edit
    assert old in LAVIS_STYLE
    with pytest.raises(ConfigError) as err:
        Config.from_file(write(tmp_path, LAVIS_STYLE.replace(old, new)))
    assert message in str(err.value)


def test_runner_choice_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="run.runner: unknown runner 'runner_epoch'"):
        Config.from_file(write(tmp_path, LAVIS_STYLE), options=["run.runner=runner_epoch"])
    with pytest.raises(ConfigError, match="runner_iter needs run.max_iters"):
        Config.from_file(write(tmp_path, LAVIS_STYLE), options=["run.runner=runner_iter"])


def test_unknown_top_level_key_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level key 'runn'; did you mean 'run'"):
        Config.from_file(write(tmp_path, LAVIS_STYLE + "\nrunn: {}\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        Config.from_file(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="key=value"):
        Config.from_file(write(tmp_path, LAVIS_STYLE), options=["run.init_lr"])


def test_credentials_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="credentials do not belong in a config"):
        Config.from_file(write(tmp_path, LAVIS_STYLE), options=["model.hf_token=hf_abc"])


def test_task_options_extend_the_run_schema(tmp_path):
    cfg = Config.from_file(str(TOY_RUN), options=["run.kill_at_micro_step=5"])
    assert cfg.run_cfg.kill_at_micro_step == 5 and cfg.run_cfg.nan_at_micro_steps == []
    with pytest.raises(ConfigError, match="unknown key run.kill_at_micro_step"):
        Config.from_file(write(tmp_path, LAVIS_STYLE), options=["run.kill_at_micro_step=5"])


def test_saved_yaml_round_trips(tmp_path):
    cfg = Config.from_file(write(tmp_path, LAVIS_STYLE))
    cfg.save(tmp_path / "saved.yaml")
    again = Config.from_file(str(tmp_path / "saved.yaml"))
    assert again.to_dict() == cfg.to_dict()


def test_cache_root_from_config_or_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VLFT_CACHE_ROOT", str(tmp_path / "env_cache"))
    assert cache_root({}) == tmp_path / "env_cache"
    assert cache_root({"cache_root": str(tmp_path / "cfg_cache")}) == tmp_path / "cfg_cache"
    assert resolve_data_path("coco/annotations/train.json", {}) == tmp_path / "env_cache" / "coco/annotations/train.json"
    monkeypatch.delenv("VLFT_CACHE_ROOT")
    assert "lavis" not in str(cache_root({})) and str(cache_root({})).endswith(".cache/vlft")


def test_a_differently_named_processor_replaces_the_default_one(tmp_path):
    text = LAVIS_STYLE.replace('name: "simple_image_train"\n          image_size: 48', 'name: "simple_image_eval"\n          image_size: 48')
    cfg = Config.from_file(write(tmp_path, text))
    train = cfg.datasets_cfg.synthetic_shapes.vis_processor.train
    assert train.name == "simple_image_eval" and "hflip" not in train  # the default's hflip did not leak


def test_numbers_written_as_strings_are_read_as_numbers(tmp_path):
    # LAVIS's YAMLs quote some numbers, and YAML reads an unquoted 2e4 as the float 20000.0
    text = LAVIS_STYLE.replace("init_lr: 1e-5", 'init_lr: "2e-6"\n  runner: runner_iter\n  max_iters: "2e4"\n'
                                                 "  iters_per_inner_epoch: 1e3\n  warmup_steps: \"2.5e3\"")
    cfg = Config.from_file(write(tmp_path, text), options=["run.max_epoch=3.0", "run.min_lr=1e-7"])
    run = cfg.run_cfg
    assert run.init_lr == 2e-6 and isinstance(run.init_lr, float)
    assert (run.max_iters, run.iters_per_inner_epoch, run.warmup_steps, run.max_epoch) == (20000, 1000, 2500, 3)
    assert all(type(run[k]) is int for k in ("max_iters", "iters_per_inner_epoch", "warmup_steps", "max_epoch"))
    assert run.min_lr == 1e-7
    assert "max_iters: 20000" in cfg.to_yaml()  # what the run folder's config.yaml records
    with pytest.raises(ConfigError, match=r"run.warmup_steps must be an integer, got '1.5'"):
        Config.from_file(write(tmp_path, LAVIS_STYLE), options=['run.warmup_steps="1.5"'])
    with pytest.raises(ConfigError, match=r"run.max_epoch must be an integer, got 2.5"):
        Config.from_file(write(tmp_path, LAVIS_STYLE), options=["run.max_epoch=2.5"])
    with pytest.raises(ConfigError, match=r"run.init_lr must be int or float, got 'fast'"):
        Config.from_file(write(tmp_path, LAVIS_STYLE), options=["run.init_lr=fast"])
    # a string key keeps a string that looks like a number
    assert Config.from_file(str(TOY_RUN), options=['run.output_dir="1e3"']).run_cfg.output_dir == "1e3"


def test_lavis_run_keys_validate_with_their_defaults(tmp_path):
    run = Config.from_file(write(tmp_path, LAVIS_STYLE)).run_cfg
    assert (run.use_dist_eval_sampler, run.lr_layer_decay, run.val_freq, run.save_freq) == (True, 1.0, 1, -1)
    text = LAVIS_STYLE.replace("amp: False", "amp: False\n  use_dist_eval_sampler: False\n  lr_layer_decay: 0.95\n"
                                             "  val_freq: 2\n  save_freq: -1")
    run = Config.from_file(write(tmp_path, text)).run_cfg
    assert (run.use_dist_eval_sampler, run.lr_layer_decay, run.val_freq, run.save_freq) == (False, 0.95, 2, -1)
    with pytest.raises(ConfigError, match="run.val_freq must be >= 1, got 0"):
        Config.from_file(write(tmp_path, LAVIS_STYLE), options=["run.val_freq=0"])
