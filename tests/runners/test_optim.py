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
