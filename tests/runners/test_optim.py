import logging

import pytest
import torch
from torch import nn

from vlft.runners.optim import build_param_groups, matches


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual_encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.text_decoder = nn.Linear(4, 4)
        self.pos_embed = nn.Parameter(torch.zeros(3, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self):
        return {"pos_embed"}

    def lr_scale(self, name):
        return 0.5 if name.startswith("text_decoder") else 1.0


def groups_by_name(groups):
    return {n: (g["weight_decay"], g["lr_scale"]) for g in groups for n in g["param_names"]}


def test_decay_exemptions_multipliers_and_model_hook():
    groups = groups_by_name(build_param_groups(Net(), 0.05, {"visual_encoder": 0.1}))
    assert groups["visual_encoder.0.weight"] == (0.05, 0.1)
    assert groups["visual_encoder.0.bias"] == (0.0, 0.1)  # bias
    assert groups["visual_encoder.1.weight"] == (0.0, 0.1)  # norm weight (1-d)
    assert groups["text_decoder.weight"] == (0.05, 0.5)  # model's lr_scale hook
    assert groups["pos_embed"] == (0.0, 1.0)  # model's no_weight_decay list
    assert not any(n.startswith("frozen") for n in groups)  # frozen params stay out


def test_patterns_match_module_paths_anywhere_and_globs():
    assert matches("base_model.model.visual_encoder.blocks.0.w", "visual_encoder")
    assert matches("visual_encoder.blocks.0.w", "visual_encoder.blocks.*")
    assert not matches("visual_encoder_proj.w", "visual_encoder")


def test_first_matching_pattern_wins_and_unmatched_pattern_fails():
    groups = groups_by_name(build_param_groups(Net(), 0.0, {"visual_encoder.0": 0.2, "visual_encoder": 0.1}))
    assert groups["visual_encoder.0.weight"][1] == 0.2 and groups["visual_encoder.1.weight"][1] == 0.1
    with pytest.raises(ValueError, match="pattern 'vision_model' matches no parameter"):
        build_param_groups(Net(), 0.0, {"vision_model": 0.1})


def test_all_frozen_is_a_clear_error():
    net = Net().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_param_groups(net, 0.0)


class Vision(nn.Module):
    """Named like transformers' vision towers: embeddings, encoder.layers.N, post_layernorm."""

    def __init__(self, layers=3):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.patch_embedding = nn.Linear(4, 4)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(layers))
        self.post_layernorm = nn.LayerNorm(4)


class Captioner(nn.Module):
    def __init__(self, freeze_vit=False):
        super().__init__()
        self.blip = nn.Module()
        self.blip.vision_model = Vision()
        self.blip.text_decoder = nn.Linear(4, 4)
        self.blip.vision_model.requires_grad_(not freeze_vit)


def test_layer_decay_gives_each_vit_layer_its_power():
    d = 0.9
    groups = groups_by_name(build_param_groups(Captioner(), 0.05, layer_decay=d))
    # 3 blocks: embeddings are layer 0, block i layer i+1, the rest of the tower layer 4
    assert groups["blip.vision_model.embeddings.patch_embedding.weight"][1] == pytest.approx(d ** 4)
    for i in range(3):
        assert groups[f"blip.vision_model.encoder.layers.{i}.weight"] == (0.05, pytest.approx(d ** (3 - i)))
        assert groups[f"blip.vision_model.encoder.layers.{i}.bias"] == (0.0, pytest.approx(d ** (3 - i)))
    assert groups["blip.vision_model.post_layernorm.weight"][1] == 1.0
    assert groups["blip.text_decoder.weight"][1] == 1.0  # outside the ViT


def test_layer_decay_composes_with_multipliers_and_the_model_hook():
    class Hooked(Captioner):
        def lr_scale(self, name):
            return 0.5 if "layers.2" in name else 1.0

    groups = groups_by_name(build_param_groups(Hooked(), 0.0, {"vision_model": 0.1, "text_decoder": 2.0}, layer_decay=0.8))
    assert groups["blip.vision_model.encoder.layers.0.weight"][1] == pytest.approx(0.1 * 0.8 ** 3)
    assert groups["blip.vision_model.encoder.layers.2.weight"][1] == pytest.approx(0.1 * 0.8 * 0.5)
    assert groups["blip.text_decoder.weight"][1] == 2.0


def test_layer_decay_1_is_lavis_uniform_lr_and_a_frozen_vit_is_untouched(caplog):
    # LAVIS's schedulers give every group the same lr: lr_layer_decay 1 is that
    assert {g["lr_scale"] for g in build_param_groups(Captioner(), 0.05, layer_decay=1.0)} == {1.0}
    with caplog.at_level(logging.INFO):
        groups = groups_by_name(build_param_groups(Captioner(freeze_vit=True), 0.05, layer_decay=0.9))
    assert set(groups) == {"blip.text_decoder.weight", "blip.text_decoder.bias"} and groups["blip.text_decoder.weight"][1] == 1.0
    assert "the ViT is frozen" in caplog.text


def test_layer_decay_on_a_model_without_vit_blocks_is_an_error():
    with pytest.raises(ValueError, match=r"run.lr_layer_decay=0.9: Net has no ViT blocks named like 'vision_model.encoder.layers.N'"):
        build_param_groups(Net(), 0.0, layer_decay=0.9)


@pytest.mark.parametrize("arch", ["blip_caption", "blip2"])
def test_layer_decay_reads_the_real_tiny_models_names(arch):
    from omegaconf import OmegaConf

    import vlft.models  # noqa: F401  (registers the models)
    from vlft.common.registry import registry

    cls = registry.get_model_class(arch)
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.freeze_vit = False
    model = cls.from_config(cfg)
    prefix = {"blip_caption": "blip", "blip2": "blip2"}[arch] + ".vision_model."
    n = 1 + max(int(name.split(".")[4]) for name, _ in model.named_parameters() if name.startswith(prefix + "encoder.layers."))
    groups = groups_by_name(build_param_groups(model, 0.05, layer_decay=0.5))
    assert groups[prefix + "embeddings.patch_embedding.weight"][1] == 0.5 ** (n + 1)
    assert groups[prefix + f"encoder.layers.{n - 1}.self_attn.qkv.weight"][1] == 0.5
    assert groups[prefix + "encoder.layers.0.self_attn.qkv.weight"][1] == 0.5 ** n
    assert all(s == 1.0 for name, (_, s) in groups.items() if ".vision_model." not in f".{name}")


def test_schedulers_keep_each_groups_factor():
    from vlft.runners.lr_schedulers import LinearWarmupCosineLRScheduler, LinearWarmupStepLRScheduler

    model = Captioner()
    for sched_cls in (LinearWarmupCosineLRScheduler, LinearWarmupStepLRScheduler):
        opt = torch.optim.AdamW(build_param_groups(model, 0.05, layer_decay=0.9), lr=1e-3)
        sched = sched_cls(opt, total_steps=20, steps_per_epoch=5, init_lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=3)
        for step in (0, 2, 3, 11, 19):
            lr = sched.step(step)
            for group in opt.param_groups:
                assert group["lr"] == pytest.approx(lr * group["lr_scale"])
        layer0 = next(g for g in opt.param_groups if "blip.vision_model.encoder.layers.0.weight" in g["param_names"])
        head = next(g for g in opt.param_groups if "blip.text_decoder.weight" in g["param_names"])
        assert layer0["lr"] / head["lr"] == pytest.approx(0.9 ** 3)


def test_lavis_yaml_layer_decay_is_not_applied_unless_asked(caplog):
    # LAVIS computes lr_layer_decay's factors, but its schedulers then give every group the
    # same lr: its BLIP-2 retrieval fine-tuning (lr_layer_decay: 0.95) trains with one lr
    from omegaconf import OmegaConf

    from vlft.runners.optim import build_optimizer

    run = OmegaConf.create({"weight_decay": 0.0, "init_lr": 1e-4, "beta2": 0.999, "lr_layer_decay": 0.9})
    with caplog.at_level(logging.WARNING):
        lavis = build_optimizer(Captioner(), run)
    assert {g["lr_scale"] for g in lavis.param_groups} == {1.0}
    assert "lr_layer_decay=0.9 is not applied, as in LAVIS" in caplog.text
    run.apply_lr_layer_decay = True
    applied = {n: g["lr_scale"] for g in build_optimizer(Captioner(), run).param_groups for n in g["param_names"]}
    assert applied["blip.vision_model.encoder.layers.0.weight"] == pytest.approx(0.9 ** 3)
