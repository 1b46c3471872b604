"""LAVIS BLIP-2 checkpoints <-> vlft BLIP-2 models (transformers' ``Blip2*`` classes).

LAVIS's ``blip2`` / ``blip2_opt`` / ``blip2_t5`` keep the EVA ViT as ``visual_encoder``
(timm names, separate ``q_bias`` / ``v_bias``), the LayerNorm after it as ``ln_vision``,
the Q-Former as a BERT (``Qformer.bert.*``, its LM head ``Qformer.cls.*``) and the LLM
under ``opt_model`` / ``t5_model`` with its input projection ``opt_proj`` / ``t5_proj``.
vlft holds transformers' ``Blip2ForImageTextRetrieval`` or
``Blip2ForConditionalGeneration`` under ``blip2.`` and adds the ITG head
(``itg_head``) and the temperature (``temp``) at the top level. Decisions:

- ViT qkv: HF has one fused ``qkv.bias``; it is ``cat(q_bias, 0, v_bias)``. A key bias
  adds the same number to every logit of a query, so attention ignores it; writing back
  to LAVIS drops it (a warning when it is not zero, e.g. after training the ViT).
- ``Qformer.bert.embeddings.LayerNorm`` is HF's ``qformer.layernorm`` (it normalises the
  queries, and the queries + text in stage 1); ``position_ids`` buffers are dropped.
- ``Qformer.cls.predictions.bias`` and ``.decoder.bias`` are one tensor in LAVIS (BERT ties
  them); both map to ``itg_head.decoder.bias``, and both are written back.
- The ITG decoder weight and the Q-Former word embeddings are one tensor in both models;
  T5's ``shared`` / ``encoder.embed_tokens`` / ``decoder.embed_tokens`` (and ``lm_head``
  when tied) likewise. LAVIS uses transformers' own OPT / T5 classes, so the inner names
  carry over unchanged. The loader checks that a checkpoint gives every name of one
  tied tensor the same value (else ValueError) and loads through ``load_state_dict``, so
  ties stay ties.
- LAVIS keys this map does not know keep their names and are reported as unexpected.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from vlft.models.convert.lavis_blip import interpolate_pos_embed

logger = logging.getLogger(__name__)

# (LAVIS name, vlft name, vlft name is under the HF model's prefix). A name ending in "."
# is a prefix (the rest of the key carries over), any other name is a whole key; "{n}" is
# a layer number. The first rule that matches wins, in either direction.
_RULES: List[Tuple[str, str, bool]] = [
    ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding", True),
    ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding", True),
    ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding.", True),
    ("visual_encoder.blocks.{n}.norm1.", "vision_model.encoder.layers.{n}.layer_norm1.", True),
    ("visual_encoder.blocks.{n}.norm2.", "vision_model.encoder.layers.{n}.layer_norm2.", True),
    ("visual_encoder.blocks.{n}.attn.qkv.weight", "vision_model.encoder.layers.{n}.self_attn.qkv.weight", True),
    ("visual_encoder.blocks.{n}.attn.proj.", "vision_model.encoder.layers.{n}.self_attn.projection.", True),
    ("visual_encoder.blocks.{n}.mlp.", "vision_model.encoder.layers.{n}.mlp.", True),
    ("ln_vision.", "vision_model.post_layernorm.", True),
    ("query_tokens", "query_tokens", True),
    ("Qformer.bert.embeddings.word_embeddings.", "embeddings.word_embeddings.", True),
    ("Qformer.bert.embeddings.position_embeddings.", "embeddings.position_embeddings.", True),
    ("Qformer.bert.embeddings.LayerNorm.", "qformer.layernorm.", True),
    ("Qformer.bert.encoder.layer.{n}.attention.self.", "qformer.encoder.layer.{n}.attention.attention.", True),
    ("Qformer.bert.encoder.layer.{n}.crossattention.self.", "qformer.encoder.layer.{n}.crossattention.attention.", True),
    # attention.output, crossattention.output, intermediate(_query), output(_query): same names
    ("Qformer.bert.encoder.layer.{n}.", "qformer.encoder.layer.{n}.", True),
    ("Qformer.cls.predictions.transform.dense.", "itg_head.dense.", False),
    ("Qformer.cls.predictions.transform.LayerNorm.", "itg_head.norm.", False),
    ("Qformer.cls.predictions.decoder.weight", "itg_head.decoder.weight", False),
    ("Qformer.cls.predictions.decoder.bias", "itg_head.decoder.bias", False),
    ("Qformer.cls.predictions.bias", "itg_head.decoder.bias", False),  # the same tensor in LAVIS
    ("vision_proj.", "vision_projection.", True),
    ("text_proj.", "text_projection.", True),
    ("itm_head.", "itm_head.", True),
    ("temp", "temp", False),
    ("opt_proj.", "language_projection.", True),
    ("t5_proj.", "language_projection.", True),
    ("opt_model.", "language_model.", True),
    ("t5_model.", "language_model.", True),
]
_QV_BIAS = re.compile(r"^visual_encoder\.blocks\.(\d+)\.attn\.([qv])_bias$")
_LLM_NAMES = {"opt": ("opt_proj.", "opt_model."), "t5": ("t5_proj.", "t5_model.")}
_POS_EMBED = "vision_model.embeddings.position_embedding"


def _pattern(template: str) -> re.Pattern:
    body = re.escape(template).replace(re.escape("{n}"), r"(?P<n>\d+)")
    return re.compile("^" + body + ("(?P<rest>.*)$" if template.endswith(".") else "$"))


_FORWARD = [(_pattern(lavis), vlft, scoped) for lavis, vlft, scoped in _RULES]
_BACKWARD = [(_pattern(vlft), lavis, scoped) for lavis, vlft, scoped in _RULES]


def _fill(template: str, match: re.Match) -> str:
    groups = match.groupdict()
    return template.replace("{n}", groups.get("n") or "") + (groups.get("rest") or "")


def lavis_to_vlft_key(key: str, prefix: str = "blip2.") -> Optional[str]:
    """The vlft name of one LAVIS key (None for keys with no rule; q/v biases are merged
    by ``convert_lavis_blip2``)."""
    for pattern, target, scoped in _FORWARD:
        match = pattern.match(key)
        if match:
            return (prefix if scoped else "") + _fill(target, match)
    return None


def convert_lavis_blip2(state: Mapping[str, torch.Tensor], prefix: str = "blip2.") -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename a LAVIS BLIP-2 state dict (unwrapped from ``{"model": ...}``) to vlft names,
    the transformers part under ``prefix``. Returns (converted state, dropped keys).
    Keys without a rule keep their LAVIS name, so a loader reports them as unexpected."""
    out: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    dropped: List[str] = []
    qv: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith(".position_ids"):  # a saved buffer in LAVIS's BERT, non-persistent in HF
            dropped.append(key)
            continue
        match = _QV_BIAS.match(key)
        if match:
            qv.setdefault(match.group(1), {})[match.group(2)] = value
            continue
        new = lavis_to_vlft_key(key, prefix) or key
        if new in out:  # two LAVIS names of one tensor (the LM head's bias)
            if not torch.equal(out[new], value.to(out[new].dtype)):
                raise ValueError(f"{origin[new]} and {key} both map to {new} but hold different values")
            continue
        out[new], origin[new] = value, key
    for block, parts in qv.items():
        if set(parts) != {"q", "v"}:
            raise ValueError(f"visual_encoder.blocks.{block}.attn has {sorted(parts)}_bias but not both q_bias and v_bias")
        q, v = parts["q"], parts["v"]
        out[f"{prefix}vision_model.encoder.layers.{block}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return out, dropped


def _guess_llm(state: Mapping[str, torch.Tensor], prefix: str) -> str:
    lm = prefix + "language_model."
    return "t5" if any(k.startswith((lm + "shared.", lm + "encoder.")) for k in state) else "opt"


def to_lavis_blip2(state: Mapping[str, torch.Tensor], prefix: str = "blip2.",
                   llm: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The inverse of ``convert_lavis_blip2``: vlft names -> LAVIS names. ``llm`` ("opt" or
    "t5") picks ``opt_*`` or ``t5_*`` names; by default T5 when the state holds T5's
    ``shared`` / ``encoder`` weights, else OPT. Keys without a rule keep their names."""
    llm = llm or _guess_llm(state, prefix)
    if llm not in _LLM_NAMES:
        raise ValueError(f"llm must be 'opt' or 't5', got {llm!r}")
    skip = {name for other, names in _LLM_NAMES.items() if other != llm for name in names}
    qkv_bias = re.compile(r"^" + re.escape(prefix) + r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.bias$")
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = qkv_bias.match(key)
        if match:
            q, k, v = value.chunk(3)
            if k.detach().abs().max().item() > 1e-6:
                logger.warning("%s: key bias %.3g != 0 is dropped (LAVIS has none; attention is invariant to it)",
                               key, k.detach().abs().max().item())
            block = f"visual_encoder.blocks.{match.group(1)}.attn."
            out[block + "q_bias"], out[block + "v_bias"] = q.clone(), v.clone()
            continue
        new = None
        for pattern, target, scoped in _BACKWARD:
            if target in skip:
                continue
            if scoped and not key.startswith(prefix):
                continue
            match = pattern.match(key[len(prefix):] if scoped else key)
            if match:
                new = _fill(target, match)
                break
        if new is None:
            logger.debug("to_lavis_blip2: no LAVIS name for %s; kept as it is", key)
            new = key
        out[new] = value
        if new == "Qformer.cls.predictions.decoder.bias":  # LAVIS's state dict holds both names
            out["Qformer.cls.predictions.bias"] = value
    return out


_LAVIS_MARKERS = ("Qformer.", "ln_vision.", "opt_proj.", "t5_proj.", "opt_model.", "t5_model.")


def is_lavis_blip2(state: Mapping) -> bool:
    """Whether a state dict (or ``{"model": state}``) has LAVIS BLIP-2 names: ``Qformer.*``,
    ``ln_vision``, ``opt_*`` / ``t5_*``, or ``visual_encoder.*`` / a bare ``query_tokens``
    without BLIP-1 text modules or HF names."""
    if isinstance(state.get("model"), Mapping):
        state = state["model"]
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith(_LAVIS_MARKERS) for k in keys):
        return True
    hf_or_blip1 = ("text_encoder.", "text_decoder.", "vision_model.", "qformer.")
    return any(k.startswith("visual_encoder.") or k == "query_tokens" for k in keys) and \
        not any(k.startswith(hf_or_blip1) for k in keys)


@dataclass
class LoadReport:
    """What ``load_lavis_blip2`` did: tensors loaded, model keys the checkpoint lacks
    (they keep their values), checkpoint keys the model has no place for, keys dropped."""

    loaded: int = 0
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)

    def summary(self) -> str:
        def some(names: List[str]) -> str:
            return f" e.g. {names[:3]}" if names else ""

        return (f"{self.loaded} tensors loaded; {len(self.missing)} missing (keep their values){some(self.missing)}; "
                f"{len(self.unexpected)} unexpected (no place in the model){some(self.unexpected)}; "
                f"{len(self.dropped)} dropped")


def _tensor_groups(model: nn.Module) -> Dict[str, int]:
    """name -> identity of the tensor behind it; tied names share an identity."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return {name: id(tensor) for name, tensor in named}


def _module_counts(keys: List[str], top: int = 10) -> str:
    modules = Counter(re.sub(r"\.\d+\.", ".*.", key).rsplit(".", 1)[0] for key in keys)
    return ", ".join(f"{name} ({count})" for name, count in modules.most_common(top))


def load_lavis_blip2(model: nn.Module, source: Union[str, os.PathLike, Mapping], prefix: str = "blip2.") -> LoadReport:
    """Load a LAVIS BLIP-2 checkpoint (a file, ``{"model": state}`` or a bare state dict)
    on top of ``model``'s current weights and report what happened.

    The position embedding is resized bicubically when the image size differs. Keys the
    model has no place for (the ITG head in a stage-2 model, the Q-Former's text FFN
    without text input) are reported, not an error; model keys the checkpoint lacks
    (LAVIS often saves only trainable weights) keep their values. Any other shape
    difference raises ValueError.
    """
    from vlft.runners.checkpoint import read

    name = "state dict" if isinstance(source, Mapping) else str(source)
    raw = source if isinstance(source, Mapping) else read(source)
    state = raw["model"] if isinstance(raw.get("model"), Mapping) else raw
    converted, dropped = convert_lavis_blip2(state, prefix)
    own = model.state_dict()

    pos = prefix + _POS_EMBED
    if pos in converted and pos in own and converted[pos].shape != own[pos].shape \
            and converted[pos].shape[-1] == own[pos].shape[-1]:
        logger.info("%s: position embedding resized from %d to %d positions", name, converted[pos].shape[1], own[pos].shape[1])
        converted[pos] = interpolate_pos_embed(converted[pos], own[pos].shape[1] - 1)

    present = {k: v for k, v in converted.items() if k in own}
    unexpected = [k for k in converted if k not in own]
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in present.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{name}: shapes differ from {type(model).__name__}'s: " + "; ".join(bad[:5]))

    identity = _tensor_groups(model)
    first: Dict[int, str] = {}
    for key, value in present.items():
        tid = identity.get(key)
        if tid is None:
            continue
        if tid in first and not torch.equal(present[first[tid]], value.to(present[first[tid]].dtype)):
            raise ValueError(f"{name}: {first[tid]} and {key} are one (tied) tensor in {type(model).__name__} but the "
                             "checkpoint gives them different values; build the model with them untied")
        first.setdefault(tid, key)
    covered = set(first)
    missing = [k for k in own if k not in present and identity.get(k) not in covered]

    model.load_state_dict(present, strict=False)  # copies into the existing tensors: ties stay ties
    report = LoadReport(loaded=len(present), missing=missing, unexpected=unexpected, dropped=dropped)
    logger.info("LAVIS BLIP-2 %s: %s", name, report.summary())
    if unexpected:
        logger.info("%s: %d checkpoint tensors have no place in %s: %s", name, len(unexpected), type(model).__name__,
                    _module_counts(unexpected))
    if missing:
        logger.warning("%s lacks %d of %s's tensors, which keep their current values: %s%s", name, len(missing),
                       type(model).__name__, missing[:5], " ..." if len(missing) > 5 else "")
    return report


# --------------------------------------------------------------------------- initial weights
# How LAVIS starts a BLIP-2 pre-training run: the ViT from EVA-CLIP's weights
# (``eva_vit_g.pth``), the Q-Former from ``bert-base-uncased``.

_EVA_KEEP = ("visual_encoder.", "ln_vision.")  # names that already have LAVIS's BLIP-2 prefix
_VISION_PREFIX = "vision_model."


def _unwrap(raw: Mapping) -> Mapping:
    return raw["model"] if isinstance(raw.get("model"), Mapping) else raw


def load_eva_vit(vision_model: nn.Module, source: Union[str, os.PathLike, Mapping]) -> LoadReport:
    """Load EVA-CLIP ViT weights as LAVIS ships them (``eva_vit_g.pth``: a bare state dict
    with ``cls_token``, ``pos_embed``, ``patch_embed.proj.*`` and ``blocks.N.*``) into a
    transformers ``Blip2VisionModel``, on top of its current weights.

    The names go through the BLIP-2 key map (as ``visual_encoder.*``), so q / v biases
    become the fused ``qkv.bias`` and the position embedding is resized bicubically when
    the image size differs. As LAVIS (depth 39, non-strict load) does, blocks beyond the
    model's depth and the final ``norm`` / ``head`` are reported as unexpected (under
    their names in the file), not an error; ``post_layernorm`` (LAVIS's ``ln_vision``,
    which the file lacks) is reported missing and keeps its initialisation. Missing
    names are ``vision_model``'s own. Other shape differences raise ValueError.
    """
    from vlft.runners.checkpoint import read

    name = "state dict" if isinstance(source, Mapping) else str(source)
    state = _unwrap(source if isinstance(source, Mapping) else read(source))
    lavis: Dict[str, torch.Tensor] = {}
    origin: Dict[str, List[str]] = {}  # converted name -> names in the file
    for key, value in state.items():
        lavis_key = key if key.startswith(_EVA_KEEP) else "visual_encoder." + key
        lavis[lavis_key] = value
        match = _QV_BIAS.match(lavis_key)
        new = (f"vision_model.encoder.layers.{match.group(1)}.self_attn.qkv.bias" if match
               else lavis_to_vlft_key(lavis_key, prefix="") or lavis_key)
        origin.setdefault(new, []).append(key)
    converted, dropped = convert_lavis_blip2(lavis, prefix="")
    dropped = [k[len("visual_encoder."):] if k.startswith("visual_encoder.") and k[len("visual_encoder."):] in state else k
               for k in dropped]

    own = vision_model.state_dict()
    present: Dict[str, torch.Tensor] = {}
    unexpected: List[str] = []
    for key, value in converted.items():
        inner = key[len(_VISION_PREFIX):] if key.startswith(_VISION_PREFIX) else None
        if inner is not None and inner in own:
            present[inner] = value
        else:
            unexpected.extend(origin.get(key, [key]))

    pos = "embeddings.position_embedding"
    if pos in present and pos in own and present[pos].shape != own[pos].shape \
            and present[pos].shape[-1] == own[pos].shape[-1]:
        logger.info("%s: position embedding resized from %d to %d positions", name, present[pos].shape[1], own[pos].shape[1])
        present[pos] = interpolate_pos_embed(present[pos], own[pos].shape[1] - 1)
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in present.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{name}: shapes differ from {type(vision_model).__name__}'s: " + "; ".join(bad[:5]))

    vision_model.load_state_dict(present, strict=False)
    missing = [k for k in own if k not in present]
    report = LoadReport(loaded=len(present), missing=missing, unexpected=unexpected, dropped=dropped)
    logger.info("EVA ViT %s: %s", name, report.summary())
    if unexpected:
        logger.info("%s: %d tensors have no place in %s (LAVIS drops the last block and the head): %s", name,
                    len(unexpected), type(vision_model).__name__, _module_counts(unexpected))
    others = [k for k in missing if not k.startswith("post_layernorm.")]
    if len(others) < len(missing):
        logger.info("post_layernorm (LAVIS's ln_vision) is not in the EVA weights; it keeps its initialisation")
    if others:
        logger.warning("%s lacks %d of %s's tensors, which keep their current values: %s%s", name, len(others),
                       type(vision_model).__name__, others[:5], " ..." if len(others) > 5 else "")
    return report


# (BERT name without "bert.", Q-Former / ITG-head names, whether the row count may differ).
# Names are relative to the Blip2 model; "itg_head." ones to the ITG head.
_BERT_RULES: List[Tuple[str, Tuple[str, ...], bool]] = [
    ("embeddings.word_embeddings.weight", ("embeddings.word_embeddings.weight",), True),
    ("embeddings.position_embeddings.weight", ("embeddings.position_embeddings.weight",), True),
    ("embeddings.LayerNorm.", ("qformer.layernorm.",), False),
    ("encoder.layer.{n}.attention.self.", ("qformer.encoder.layer.{n}.attention.attention.",), False),
    ("encoder.layer.{n}.attention.output.", ("qformer.encoder.layer.{n}.attention.output.",), False),
    # LAVIS copies the text FFN into the query FFN of every layer
    ("encoder.layer.{n}.intermediate.", ("qformer.encoder.layer.{n}.intermediate.",
                                         "qformer.encoder.layer.{n}.intermediate_query."), False),
    ("encoder.layer.{n}.output.", ("qformer.encoder.layer.{n}.output.", "qformer.encoder.layer.{n}.output_query."), False),
    ("cls.predictions.transform.dense.", ("itg_head.dense.",), False),
    ("cls.predictions.transform.LayerNorm.", ("itg_head.norm.",), False),
    ("cls.predictions.bias", ("itg_head.decoder.bias",), True),
    ("cls.predictions.decoder.bias", ("itg_head.decoder.bias",), True),  # the same tensor in BERT
]
_BERT_FORWARD = [(_pattern(bert), targets, rows) for bert, targets, rows in _BERT_RULES]
# what LAVIS's Q-Former has no place for: BERT's pooler, token types, NSP head; the MLM
# decoder weight is the word embeddings (tied in both); cross-attention is new in LAVIS
_BERT_DROP = re.compile(r"^(pooler\.|embeddings\.token_type_embeddings\.|cls\.seq_relationship\.|"
                        r"cls\.predictions\.decoder\.weight$|encoder\.layer\.\d+\.crossattention\.)|(^|\.)position_ids$")
_MLM_ARCHS = ("BertForMaskedLM", "BertForPreTraining")


def _bert_state(source) -> Tuple[Dict[str, torch.Tensor], str]:
    """BERT's tensors without the ``bert.`` prefix, and a name for the logs."""
    if isinstance(source, nn.Module):
        raw, name = source.state_dict(), type(source).__name__
    elif isinstance(source, Mapping):
        raw, name = _unwrap(source), "state dict"
    elif os.path.isfile(source):
        from vlft.runners.checkpoint import read

        raw, name = _unwrap(read(source)), str(source)
    else:  # a HF id or directory: the class its config names, so its MLM head loads when it has one
        import transformers

        name = str(source)
        archs = transformers.AutoConfig.from_pretrained(name).architectures or []
        cls = (transformers.BertLMHeadModel if "BertLMHeadModel" in archs
               else transformers.BertForMaskedLM if any(a in _MLM_ARCHS for a in archs) else transformers.BertModel)
        model, info = cls.from_pretrained(name, output_loading_info=True)
        raw = model.state_dict()
        if any(k.startswith("cls.") for k in info.get("missing_keys", ())):  # newly initialised, not BERT's
            logger.warning("%s has no MLM head; the ITG head keeps its initialisation", name)
            raw = {k: v for k, v in raw.items() if not k.startswith("cls.")}
    state: Dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        key = key[len("bert."):] if key.startswith("bert.") else key
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))  # TF-era names
        state[key] = value
    return state, name


def init_qformer_from_bert(blip2: nn.Module, source: Union[str, os.PathLike, nn.Module, Mapping],
                           itg_head: Optional[nn.Module] = None) -> LoadReport:
    """Initialise the Q-Former of a transformers ``Blip2*`` model (``blip2``) from a BERT,
    as LAVIS starts stage 1 from ``bert-base-uncased``.

    ``source``: a HF id or directory (``BertModel``, ``BertForMaskedLM`` or
    ``BertLMHeadModel`` weights), a checkpoint file, a module or a state dict; ``bert.``
    prefixes are stripped. BERT's embeddings, self-attention and FFN fill the same places
    in every Q-Former layer, its embedding LayerNorm ``qformer.layernorm``; each layer's
    FFN also fills the query FFN (``intermediate_query`` / ``output_query``, as LAVIS
    copies them). Cross-attention keeps its initialisation. The word / position
    embeddings copy their first ``min`` rows (LAVIS adds a [DEC] row, which keeps its
    initialisation). With ``itg_head`` (vlft's ``QFormerLMHead``) BERT's MLM transform
    and output bias fill it; its decoder weight is the word embeddings. BERT's pooler,
    token-type embeddings and NSP head are dropped; layers beyond the Q-Former's depth
    are reported as unexpected. Missing names are the Q-Former's (``embeddings.``,
    ``qformer.``) and ``itg_head.*`` ones. Other shape differences raise ValueError.
    """
    state, name = _bert_state(source)
    own: Dict[str, torch.Tensor] = {k: v for k, v in blip2.state_dict(keep_vars=True).items()
                                    if k.startswith(("embeddings.", "qformer."))}
    identity = {k: id(v) for k, v in own.items()}
    if itg_head is not None:
        for k, v in itg_head.state_dict(keep_vars=True).items():
            own["itg_head." + k], identity["itg_head." + k] = v, id(v)

    writes: Dict[str, Tuple[torch.Tensor, str, bool]] = {}  # target -> (value, BERT name, rows may differ)
    unexpected: List[str] = []
    dropped: List[str] = []
    bad: List[str] = []
    for key, value in state.items():
        if _BERT_DROP.search(key) or (itg_head is None and key.startswith("cls.")):
            dropped.append(key)
            continue
        if key == "cls.predictions.decoder.bias" and "cls.predictions.bias" in state:
            if not torch.equal(value, state["cls.predictions.bias"]):
                logger.warning("%s: cls.predictions.decoder.bias differs from cls.predictions.bias; the latter is used", name)
            dropped.append(key)
            continue
        targets = None
        for pattern, templates, rows in _BERT_FORWARD:
            match = pattern.match(key)
            if match:
                targets = [_fill(t, match) for t in templates]
                break
        if targets is None or any(t not in own for t in targets):  # unknown, or a layer beyond the Q-Former's depth
            unexpected.append(key)
            continue
        for target in targets:
            have = own[target].shape
            if (value.shape[1:] != have[1:] or value.dim() != len(have)) if rows else value.shape != have:
                bad.append(f"{key} {tuple(value.shape)} -> {target} {tuple(have)}")
            writes[target] = (value, key, rows)
    if bad:
        raise ValueError(f"{name}: shapes differ from the Q-Former's: " + "; ".join(bad[:5]))

    with torch.no_grad():
        for target, (value, key, rows) in writes.items():
            tensor = own[target]
            n = min(value.shape[0], tensor.shape[0]) if rows else tensor.shape[0]
            tensor[:n].copy_(value[:n])
            if n < tensor.shape[0]:
                logger.info("%s: %s has %d rows, %s %d; the last %d keep their initialisation", name, key,
                            value.shape[0], target, tensor.shape[0], tensor.shape[0] - n)
            elif n < value.shape[0]:
                logger.warning("%s: %s has %d rows, %s only %d; the rest are not used", name, key, value.shape[0],
                               target, tensor.shape[0])

    covered = {identity[t] for t in writes}
    missing = [k for k in own if identity[k] not in covered]
    report = LoadReport(loaded=len(writes), missing=missing, unexpected=unexpected, dropped=dropped)
    logger.info("Q-Former from BERT %s: %s", name, report.summary())
    if unexpected:
        logger.info("%s: %d BERT tensors have no place in the Q-Former: %s", name, len(unexpected), _module_counts(unexpected))
    return report
