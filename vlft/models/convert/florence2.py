"""Original ``microsoft/Florence-2-*`` checkpoints (the remote-code model) into
transformers' native ``Florence2ForConditionalGeneration``, without running remote code.

The key map is the one of transformers' conversion script
(``convert_florence2_original_pytorch_to_hf.py``, on GitHub, not in the wheel):

===============================================================  =========================================================
original                                                         native
===============================================================  =========================================================
``vision_tower.convs.{i}.proj.*``                                ``model.vision_tower.convs.{i}.conv.*``
``vision_tower.convs.{i}.norm.*``                                ``model.vision_tower.convs.{i}.norm.*``
``vision_tower.blocks.{s}.{b}.{spatial,channel}_block.conv{1,2}  ``...{spatial,channel}_block.conv{1,2}.*``
.fn.dw.*``
``...spatial_block.window_attn.norm.*`` / ``.ffn.norm.*``        ``...spatial_block.norm1.*`` / ``.norm2.*``
``...spatial_block.window_attn.fn.{qkv,proj}.*``                 ``...spatial_block.window_attn.{qkv,proj}.*``
``...channel_block.channel_attn.norm.*`` / ``.ffn.norm.*``       ``...channel_block.norm1.*`` / ``.norm2.*``
``...channel_block.channel_attn.fn.{qkv,proj}.*``                ``...channel_block.channel_attn.{qkv,proj}.*``
``...{spatial,channel}_block.ffn.fn.net.{fc1,fc2}.*``            ``...{spatial,channel}_block.ffn.{fc1,fc2}.*``
``image_projection`` (a ``[in, out]`` matrix)                    ``model.multi_modal_projector.image_projection.weight``
                                                                 (transposed: ``[out, in]``)
``image_proj_norm.*``, ``image_pos_embed.*``,                    ``model.multi_modal_projector.image_proj_norm.*``,
``visual_temporal_embed.pos_idx_to_embed``                       ``.image_position_embed.*``, ``.visual_temporal_embed.*``
``language_model.model.*``                                       ``model.language_model.*``
``language_model.lm_head.weight``                                ``lm_head.weight``
``language_model.final_logits_bias``                             dropped (all zeros in BART; the native model has none)
===============================================================  =========================================================

The original vocabulary (51,289 rows) lacks transformers' ``<image>`` token: the token
tables are loaded into the first rows and then grown to the tokenizer, padded to a
multiple of 64 (as the converted repos, 51,328 rows). Every load reports what was
loaded, missing (keeps its initial value, a warning) and unexpected (an error).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

DROPPED = ("language_model.final_logits_bias",)
_BLOCK = r"vision_tower\.blocks\.(\d+)\.(\d+)\."
_RULES: List[Tuple[str, str]] = [
    (r"vision_tower\.convs\.(\d+)\.proj\.(.+)", r"model.vision_tower.convs.\1.conv.\2"),
    (r"vision_tower\.convs\.(\d+)\.norm\.(.+)", r"model.vision_tower.convs.\1.norm.\2"),
    (_BLOCK + r"(spatial_block|channel_block)\.(conv1|conv2)\.fn\.dw\.(.+)", r"model.vision_tower.blocks.\1.\2.\3.\4.\5"),
    (_BLOCK + r"spatial_block\.window_attn\.norm\.(.+)", r"model.vision_tower.blocks.\1.\2.spatial_block.norm1.\3"),
    (_BLOCK + r"spatial_block\.window_attn\.fn\.(qkv|proj)\.(.+)", r"model.vision_tower.blocks.\1.\2.spatial_block.window_attn.\3.\4"),
    (_BLOCK + r"channel_block\.channel_attn\.norm\.(.+)", r"model.vision_tower.blocks.\1.\2.channel_block.norm1.\3"),
    (_BLOCK + r"channel_block\.channel_attn\.fn\.(qkv|proj)\.(.+)", r"model.vision_tower.blocks.\1.\2.channel_block.channel_attn.\3.\4"),
    (_BLOCK + r"(spatial_block|channel_block)\.ffn\.norm\.(.+)", r"model.vision_tower.blocks.\1.\2.\3.norm2.\4"),
    (_BLOCK + r"(spatial_block|channel_block)\.ffn\.fn\.net\.(fc1|fc2)\.(.+)", r"model.vision_tower.blocks.\1.\2.\3.ffn.\4.\5"),
    (r"image_projection", r"model.multi_modal_projector.image_projection.weight"),
    (r"image_proj_norm\.(.+)", r"model.multi_modal_projector.image_proj_norm.\1"),
    (r"image_pos_embed\.(.+)", r"model.multi_modal_projector.image_position_embed.\1"),
    (r"visual_temporal_embed\.(.+)", r"model.multi_modal_projector.visual_temporal_embed.\1"),
    (r"language_model\.lm_head\.weight", r"lm_head.weight"),
    (r"language_model\.model\.(.+)", r"model.language_model.\1"),
]
_TOKEN_TABLES = ("model.language_model.shared.weight", "model.language_model.encoder.embed_tokens.weight",
                 "model.language_model.decoder.embed_tokens.weight", "lm_head.weight")


@dataclass
class LoadReport:
    loaded: int = 0
    dropped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    grown: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    def summary(self) -> str:
        grown = ", ".join(f"{k.rsplit('.', 2)[-2]} {a}->{b}" for k, (a, b) in list(self.grown.items())[:1])
        return (f"{self.loaded} tensors loaded, {len(self.dropped)} dropped {self.dropped}, {len(self.missing)} missing"
                f"{' ' + str(self.missing[:5]) if self.missing else ''}, {len(self.unexpected)} unexpected"
                + (f", token tables grown ({grown})" if grown else ""))


def original_to_hf_key(key: str) -> str:
    """The native name of an original checkpoint key (unchanged when no rule applies)."""
    for pattern, repl in _RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def hf_to_original_key(key: str) -> str:
    """The inverse of :func:`original_to_hf_key` (used to write original-layout files)."""
    inverse = [
        (r"model\.vision_tower\.convs\.(\d+)\.conv\.(.+)", r"vision_tower.convs.\1.proj.\2"),
        (r"model\.vision_tower\.convs\.(\d+)\.norm\.(.+)", r"vision_tower.convs.\1.norm.\2"),
        (r"model\.vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial_block|channel_block)\.(conv1|conv2)\.(.+)",
         r"vision_tower.blocks.\1.\2.\3.\4.fn.dw.\5"),
        (r"model\.vision_tower\.blocks\.(\d+)\.(\d+)\.spatial_block\.norm1\.(.+)", r"vision_tower.blocks.\1.\2.spatial_block.window_attn.norm.\3"),
        (r"model\.vision_tower\.blocks\.(\d+)\.(\d+)\.spatial_block\.window_attn\.(.+)", r"vision_tower.blocks.\1.\2.spatial_block.window_attn.fn.\3"),
        (r"model\.vision_tower\.blocks\.(\d+)\.(\d+)\.channel_block\.norm1\.(.+)", r"vision_tower.blocks.\1.\2.channel_block.channel_attn.norm.\3"),
        (r"model\.vision_tower\.blocks\.(\d+)\.(\d+)\.channel_block\.channel_attn\.(.+)", r"vision_tower.blocks.\1.\2.channel_block.channel_attn.fn.\3"),
        (r"model\.vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial_block|channel_block)\.norm2\.(.+)", r"vision_tower.blocks.\1.\2.\3.ffn.norm.\4"),
        (r"model\.vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial_block|channel_block)\.ffn\.(.+)", r"vision_tower.blocks.\1.\2.\3.ffn.fn.net.\4"),
        (r"model\.multi_modal_projector\.image_projection\.weight", r"image_projection"),
        (r"model\.multi_modal_projector\.image_proj_norm\.(.+)", r"image_proj_norm.\1"),
        (r"model\.multi_modal_projector\.image_position_embed\.(.+)", r"image_pos_embed.\1"),
        (r"model\.multi_modal_projector\.visual_temporal_embed\.(.+)", r"visual_temporal_embed.\1"),
        (r"lm_head\.weight", r"language_model.lm_head.weight"),
        (r"model\.language_model\.(.+)", r"language_model.model.\1"),
    ]
    for pattern, repl in inverse:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def to_original_state(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A native state dict in the original layout (``image_projection`` transposed,
    ``final_logits_bias`` added as BART has it)."""
    out = {}
    for key, value in state.items():
        new = hf_to_original_key(key)
        out[new] = value.t().contiguous() if new == "image_projection" else value.clone()
    out["language_model.final_logits_bias"] = torch.zeros(1, state["lm_head.weight"].shape[0])
    return out


def looks_original(state: Mapping[str, Any]) -> bool:
    return any(k.startswith(("language_model.model.", "vision_tower.")) for k in state) and not any(
        k.startswith("model.language_model.") for k in state)


def convert_original_state(state: Mapping[str, torch.Tensor], hf_model: nn.Module) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """Rename, transpose and load an original state dict into ``hf_model`` (in place)."""
    report = LoadReport()
    own = hf_model.state_dict()
    converted: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in DROPPED:
            report.dropped.append(key)
            continue
        new = original_to_hf_key(key)
        if new not in own:
            report.unexpected.append(key)
            continue
        if key == "image_projection":
            value = value.t()
        if new in _TOKEN_TABLES and value.shape[0] < own[new].shape[0]:
            grown = own[new].clone()
            grown[: value.shape[0]] = value
            report.grown[new] = (value.shape[0], own[new].shape[0])
            value = grown
        converted[new] = value
    if report.unexpected:
        raise KeyError(f"original Florence-2 checkpoint: {len(report.unexpected)} keys have no place in "
                       f"Florence2ForConditionalGeneration, e.g. {report.unexpected[:5]}")
    result = hf_model.load_state_dict(converted, strict=False)
    tied = set(_TOKEN_TABLES)  # tied to the shared table: present when that one is
    report.missing = [k for k in result.missing_keys if not (k in tied and "model.language_model.shared.weight" in converted)]
    report.loaded = len(converted)
    if report.missing:
        logger.warning("original Florence-2 checkpoint lacks %d tensors, which keep their initial values: %s",
                       len(report.missing), report.missing[:5])
    return converted, report


def is_original_source(source: str) -> bool:
    """Whether ``source`` names an original checkpoint: a ``microsoft/Florence-2-*`` id, or a
    directory whose ``config.json`` has the remote code's ``davit`` vision config."""
    path = Path(source)
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            vision = json.loads(config.read_text()).get("vision_config") or {}
            return vision.get("model_type") == "davit" or "dim_embed" in vision
        return False
    return bool(re.fullmatch(r"microsoft/Florence-2-[\w.-]+", source))


def original_config(raw: Mapping[str, Any], image_token_id: int):
    """A native ``Florence2Config`` from an original ``config.json``."""
    from transformers import Florence2Config

    vision = dict(raw.get("vision_config") or {})
    native = {"embed_dim": vision["dim_embed"]}
    for key in ("depths", "patch_size", "patch_stride", "patch_padding", "patch_prenorm", "num_heads", "num_groups",
                "window_size", "drop_path_rate", "projection_dim"):
        if key in vision:
            native[key] = vision[key]
    if "visual_temporal_embedding" in vision:
        native["max_temporal_embeddings"] = vision["visual_temporal_embedding"]["max_temporal_embeddings"]
    if "image_pos_embed" in vision:
        native["max_position_embeddings"] = vision["image_pos_embed"]["max_pos_embeddings"]
    native.setdefault("projection_dim", raw.get("projection_dim", 1024))
    text = {k: v for k, v in dict(raw.get("text_config") or {}).items() if not k.startswith("_")}
    text["model_type"] = "bart"
    return Florence2Config(text_config=text, vision_config=native, image_token_id=image_token_id)


def _local_dir(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download  # files only: the remote code is never imported

    return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))


def read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    from vlft.runners.checkpoint import read

    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            raw = read(folder / name)
            return raw.get("model", raw)
    raise FileNotFoundError(f"original Florence-2 checkpoint {folder}: no model.safetensors or pytorch_model.bin")


def load_original(source: str, tokenizer) -> Tuple[nn.Module, LoadReport]:
    """A native model from an original checkpoint directory (or hub id): config converted,
    weights renamed, token tables grown to the tokenizer (padded to 64)."""
    from transformers import Florence2ForConditionalGeneration

    folder = _local_dir(source)
    raw = json.loads((folder / "config.json").read_text())
    config = original_config(raw, tokenizer.image_token_id)
    state = read_weights(folder)
    rows = state["language_model.model.shared.weight"].shape[0]
    config.text_config.vocab_size = rows
    model = Florence2ForConditionalGeneration(config)
    _, report = convert_original_state(state, model)
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        report.grown["model.language_model.shared.weight"] = (rows, model.get_input_embeddings().num_embeddings)
    return model, report
